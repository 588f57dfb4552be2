drop table city_leases;
