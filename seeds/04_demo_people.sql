-- Demo customers and workers with fixed ids, so tokens printed by `arreglame token` stay valid
-- across re-seeding.
insert into customers (id, name, email, phone) values
    ('00000000-0000-4000-8000-000000000c01', 'Lucía Fernández', 'lucia@example.com', '+54 11 5555-0101'),
    ('00000000-0000-4000-8000-000000000c02', 'Martín Gómez', 'martin@example.com', '+54 11 5555-0102'),
    ('00000000-0000-4000-8000-000000000c03', 'Sofía Romero', 'sofia@example.com', '+54 351 555-0103')
on conflict (id) do nothing;

insert into worker_profiles (id, name, phone, "cityId", "lastLatitude", "lastLongitude", skills, rating) values
    ('00000000-0000-4000-8000-00000000a001', 'Juan Pérez', '+54 11 5555-0201', 'buenos-aires', -34.6037, -58.3816, '{lawn_mowing,gardening}', 4.80),
    ('00000000-0000-4000-8000-00000000a002', 'Carlos Díaz', '+54 11 5555-0202', 'buenos-aires', -34.5875, -58.4200, '{lawn_mowing}', 4.50),
    ('00000000-0000-4000-8000-00000000a003', 'Ana López', '+54 11 5555-0203', 'buenos-aires', -34.6200, -58.4400, '{cleaning,gardening}', 4.90),
    ('00000000-0000-4000-8000-00000000a004', 'Pedro Ruiz', '+54 11 5555-0204', 'buenos-aires', -34.6400, -58.4000, '{lawn_mowing,gardening,cleaning}', 4.20),
    ('00000000-0000-4000-8000-00000000a005', 'María Sosa', '+54 351 555-0205', 'cordoba', -31.4201, -64.1888, '{lawn_mowing,cleaning}', 4.70)
on conflict (id) do nothing;
