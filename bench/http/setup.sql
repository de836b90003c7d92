-- The tables of bench/http (run.sh loads this after CREATE EXTENSION).
\set ON_ERROR_STOP on
SET client_min_messages = warning;

-- The business table every variant writes one row into per payment.  No
-- unique key on idem_key: only the idempotency layer keeps it to one payment
-- per key, and the checks count them.
CREATE TABLE payments (
    id         bigserial PRIMARY KEY,
    idem_key   text,
    amount     int,
    to_account text,
    created_at timestamptz DEFAULT now()
);

-- Variant handwritten: the application's own key table (brandur's design).
CREATE TABLE hw_keys (
    idem_key      text COLLATE "C" PRIMARY KEY,
    request       jsonb NOT NULL,
    response_code int,
    response_body jsonb,
    created_at    timestamptz NOT NULL DEFAULT now()
);
