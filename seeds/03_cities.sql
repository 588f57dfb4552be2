-- Cities served, each with its service area as a GeoJSON polygon (lon, lat).
insert into cities (id, name, country, currency, timezone, "serviceArea") values
    ('buenos-aires', 'Buenos Aires', 'AR', 'ARS', 'America/Argentina/Buenos_Aires',
     '{"type":"Polygon","coordinates":[[[-58.531,-34.705],[-58.335,-34.705],[-58.335,-34.527],[-58.460,-34.527],[-58.531,-34.615],[-58.531,-34.705]]]}'),
    ('cordoba', 'Córdoba', 'AR', 'ARS', 'America/Argentina/Cordoba',
     '{"type":"Polygon","coordinates":[[[-64.310,-31.500],[-64.080,-31.500],[-64.080,-31.310],[-64.310,-31.310],[-64.310,-31.500]]]}'),
    ('rosario', 'Rosario', 'AR', 'ARS', 'America/Argentina/Buenos_Aires',
     '{"type":"Polygon","coordinates":[[[-60.780,-33.030],[-60.620,-33.030],[-60.620,-32.860],[-60.780,-32.860],[-60.780,-33.030]]]}')
on conflict (id) do nothing;
