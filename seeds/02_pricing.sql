-- Service categories with their base rate per m² and minimum price, in centavos (ARS).
insert into service_categories (code, name, "baseRatePerSqmCents", "minimumPriceCents", "requiredSkill") values
    ('lawn_mowing', 'Corte de pasto', 15000, 1500000, 'lawn_mowing'),
    ('garden_cleanup', 'Limpieza de jardín', 20000, 2000000, 'gardening'),
    ('hedge_trimming', 'Poda de cercos', 25000, 2500000, 'gardening'),
    ('house_cleaning', 'Limpieza de hogar', 30000, 2500000, 'cleaning')
on conflict (code) do nothing;

insert into difficulty_multipliers (level, multiplier, description) values
    ('EASY', 1.000, 'Flat, open area, regular upkeep'),
    ('MEDIUM', 1.250, 'Some obstacles or overgrowth'),
    ('HARD', 1.500, 'Heavy overgrowth, slopes or tight access'),
    ('EXTREME', 2.000, 'Abandoned lot, dense brush, hazardous access')
on conflict (level) do nothing;

insert into extra_multipliers (code, name, multiplier, description) values
    ('tall_grass', 'Pasto alto', 1.200, 'Grass taller than 30 cm'),
    ('debris_removal', 'Retiro de residuos', 1.150, 'Clippings and debris taken away'),
    ('slope', 'Terreno en pendiente', 1.100, 'Sloped terrain'),
    ('urgent', 'Urgente', 1.300, 'Same-day service')
on conflict (code) do nothing;
