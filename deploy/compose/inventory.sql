-- The quick start's sample PostgreSQL target: a database the agent reaches through the
-- gateway with a ticket as its password; the gateway logs in as `inventory` with the real one.
CREATE ROLE inventory LOGIN PASSWORD 'inventory-quickstart';
CREATE DATABASE inventory OWNER inventory;
\connect inventory
SET ROLE inventory;
CREATE TABLE items (id serial PRIMARY KEY, name text NOT NULL, stock integer NOT NULL);
INSERT INTO items (name, stock) VALUES ('bolts', 1200), ('nuts', 800), ('washers', 3000);
