-- The reservation rule of Miqat built on PostgreSQL the way a careful team would: the
-- catalog in three tables, one server-side function that makes the whole decision, one live
-- reservation per holder by a unique partial index, seats taken by a guarded UPDATE.
-- Loaded by bench/compare/postgres.sh; psql variables: none.

SET client_min_messages = warning;
DROP TABLE IF EXISTS reservations, plan, caravans, holders, waves CASCADE;

CREATE TABLE holders (
    national_id    bigint PRIMARY KEY,
    tracking_code  text    NOT NULL,
    receipt_no     text    NOT NULL,
    receipt_date   integer NOT NULL,  -- Jalali yyyymmdd
    receipt_status text    NOT NULL,  -- valid | needs_conversion
    province_id    integer NOT NULL,
    city           text    NOT NULL
);

CREATE TABLE caravans (
    id             text PRIMARY KEY,
    province_id    integer NOT NULL,
    city           text    NOT NULL,
    manager        text    NOT NULL,
    phone          text    NOT NULL,
    price_group    text    NOT NULL,
    route          text    NOT NULL,
    departure_date text    NOT NULL,
    price_rial     bigint  NOT NULL,
    capacity       integer NOT NULL CHECK (capacity > 0),
    taken          integer NOT NULL DEFAULT 0,
    CHECK (taken BETWEEN 0 AND capacity)
) WITH (fillfactor = 50);  -- room on each page for HOT updates of `taken`

-- The registration waves: a receipt deposited on or before `receipts_until` may register once
-- `opens_at` has passed (`provinces` NULL: every province).
CREATE TABLE waves (
    name           text PRIMARY KEY,
    receipts_until integer     NOT NULL,
    opens_at       timestamptz NOT NULL,
    provinces      integer[]
);

CREATE TABLE reservations (
    id          uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    holder_id   bigint      NOT NULL REFERENCES holders (national_id),
    caravan_id  text        NOT NULL REFERENCES caravans (id),
    status      text        NOT NULL DEFAULT 'held',  -- held | confirmed | cancelled | expired
    created_at  timestamptz NOT NULL DEFAULT now(),
    deadline_at timestamptz
);
-- One live reservation per holder.
CREATE UNIQUE INDEX reservations_one_live_per_holder
    ON reservations (holder_id) WHERE status IN ('held', 'confirmed');

-- The requests a benchmark sends, in order: row i is the i-th reservation (numbered from 0).
CREATE TABLE plan (
    i             integer PRIMARY KEY,
    national_id   bigint  NOT NULL,
    tracking_code text    NOT NULL,
    caravan_id    text    NOT NULL
);

-- The whole decision in one round trip. Returns the new reservation's id as text, or the
-- refusal's code (the same codes Miqat answers). Refusals change nothing.
CREATE FUNCTION reserve(p_national_id bigint, p_tracking_code text, p_caravan text)
RETURNS text LANGUAGE plpgsql AS $$
DECLARE
    h   holders%ROWTYPE;
    c   caravans%ROWTYPE;
    rid uuid;
BEGIN
    SELECT * INTO h FROM holders WHERE national_id = p_national_id;
    IF NOT FOUND OR h.tracking_code <> p_tracking_code THEN
        RETURN 'invalid_credentials';
    END IF;
    IF h.receipt_status <> 'valid' THEN
        RETURN 'receipt_needs_conversion';
    END IF;
    SELECT * INTO c FROM caravans WHERE id = p_caravan;
    IF NOT FOUND THEN
        RETURN 'caravan_not_found';
    END IF;
    IF c.province_id <> h.province_id OR c.city <> h.city THEN
        RETURN 'province_mismatch';
    END IF;
    IF NOT EXISTS (
        SELECT 1 FROM waves w
        WHERE h.receipt_date <= w.receipts_until
          AND w.opens_at <= now()
          AND (w.provinces IS NULL OR h.province_id = ANY (w.provinces))
    ) THEN
        RETURN 'not_called';
    END IF;
    -- The holder's one live reservation first (the unique partial index arbitrates), then the
    -- seat: the caravan's row stays locked for the shortest time.
    INSERT INTO reservations (holder_id, caravan_id, deadline_at)
    VALUES (p_national_id, p_caravan, now() + interval '72 hours')
    ON CONFLICT (holder_id) WHERE status IN ('held', 'confirmed') DO NOTHING
    RETURNING id INTO rid;
    IF rid IS NULL THEN
        RETURN 'already_reserved';
    END IF;
    UPDATE caravans SET taken = taken + 1 WHERE id = p_caravan AND taken < capacity;
    IF NOT FOUND THEN
        DELETE FROM reservations WHERE id = rid;
        RETURN 'caravan_full';
    END IF;
    RETURN rid::text;
END;
$$;
