-- Loads a `miqat gen` data set into the schema of schema.sql. psql variables: `data` (the
-- data set's folder), `cutoff` (the main wave's receipts_until as yyyymmdd), `opens_at` (its
-- opening, RFC 3339).

CREATE TEMP TABLE holders_csv (
    national_id text, tracking_code text, receipt_no text, receipt_date text,
    receipt_status text, province_id integer, city text);
\set holders_file :data '/holders.csv'
COPY holders_csv FROM :'holders_file' WITH (FORMAT csv, HEADER true);
INSERT INTO holders
SELECT national_id::bigint, tracking_code, receipt_no,
       replace(receipt_date, '/', '')::integer, receipt_status, province_id, city
FROM holders_csv;

\set caravans_file :data '/caravans.csv'
COPY caravans (id, province_id, city, manager, phone, price_group, route, departure_date,
               price_rial, capacity)
FROM :'caravans_file' WITH (FORMAT csv, HEADER true);

INSERT INTO waves VALUES ('main', :cutoff, :'opens_at', NULL);

VACUUM ANALYZE holders;
VACUUM ANALYZE caravans;
VACUUM ANALYZE waves;
