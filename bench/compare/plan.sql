-- Builds the table `plan` for one scenario and sets the caravans' capacities for it. psql
-- variables: `scenario` (spread | hot), `cutoff` (the main wave's receipts_until as
-- yyyymmdd), `hot_caravans`.
--
-- spread: every seat of every caravan once, each to a distinct called holder of the
--         caravan's own city (every reservation succeeds), in a fixed shuffled order.
-- hot:    the `hot_caravans` cities with the most called holders; one caravan in each (its
--         first by id) whose capacity is raised to seat every called holder of its city; the
--         plan sends each of them to their city's hot caravan, in a fixed shuffled order.

TRUNCATE plan, reservations;
UPDATE caravans SET taken = 0;
UPDATE caravans c SET capacity = o.capacity FROM caravans_original o WHERE c.id = o.id;

SELECT :'scenario' = 'hot' AS hot \gset
\if :hot
CREATE TEMP TABLE hot AS
SELECT DISTINCT ON (province_id, city) c.id, c.province_id, c.city
FROM caravans c
JOIN (SELECT province_id, city FROM holders
      WHERE receipt_status = 'valid' AND receipt_date <= :cutoff
      GROUP BY province_id, city ORDER BY count(*) DESC, province_id, city
      LIMIT :hot_caravans) busiest USING (province_id, city)
ORDER BY province_id, city, c.id;

INSERT INTO plan
SELECT row_number() OVER (ORDER BY md5(h.national_id::text)) - 1,
       h.national_id, h.tracking_code, hot.id
FROM holders h JOIN hot USING (province_id, city)
WHERE h.receipt_status = 'valid' AND h.receipt_date <= :cutoff;

UPDATE caravans c SET capacity = c.capacity + s.n
FROM (SELECT caravan_id, count(*) AS n FROM plan GROUP BY caravan_id) s
WHERE c.id = s.caravan_id;
\else
INSERT INTO plan
SELECT row_number() OVER (ORDER BY md5(s.national_id::text)) - 1,
       s.national_id, s.tracking_code, s.caravan_id
FROM (SELECT e.national_id, e.tracking_code, seat.id AS caravan_id
      FROM (SELECT national_id, tracking_code, province_id, city,
                   row_number() OVER (PARTITION BY province_id, city ORDER BY national_id) AS k
            FROM holders
            WHERE receipt_status = 'valid' AND receipt_date <= :cutoff) e
      JOIN (SELECT c.id, c.province_id, c.city,
                   row_number() OVER (PARTITION BY c.province_id, c.city ORDER BY c.id, n) AS k
            FROM caravans c, generate_series(1, c.capacity) n) seat
      USING (province_id, city, k)) s;
\endif
ANALYZE plan;
SELECT count(*) AS plan_rows, count(DISTINCT caravan_id) AS plan_caravans FROM plan;
