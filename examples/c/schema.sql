-- The application's schema for idem_worker: its table, and the work function
-- that idem_call runs for a new key (psql -f schema.sql, after CREATE
-- EXTENSION idempotency).
--
-- orders has deliberately no UNIQUE (key): the extension alone must keep it
-- to one order per key, and test.sh checks that.
CREATE TABLE IF NOT EXISTS orders (
    id     serial PRIMARY KEY,
    key    text NOT NULL,
    worker int NOT NULL,
    amount int NOT NULL
);

-- create_order(request): the work of one request, run by idem_call between
-- the begin and the finish of its key, in the same transaction.  It returns
-- the response to store and to send; an error it raises rolls back the key
-- with the order, so a retry runs it again.
--
-- The request is {"amount": N}; the rest reaches the work through settings:
--   orders.key      set by the call itself, set_config(..., true): this
--                   statement's transaction only
--   orders.worker   set once per session by idem_worker
--   orders.work_ms  idem_worker -d: simulated work, holding the key that long
-- SET search_path FROM CURRENT: it finds orders and idem_response where this
-- script found them, whatever the caller's search_path.
CREATE OR REPLACE FUNCTION create_order(request jsonb) RETURNS idem_response
LANGUAGE plpgsql
SET search_path FROM CURRENT
AS $$
DECLARE
    work_ms int := coalesce(nullif(current_setting('orders.work_ms', true), ''), '0')::int;
    o       orders;
BEGIN
    IF work_ms > 0 THEN
        PERFORM pg_sleep(work_ms / 1000.0);
    END IF;
    INSERT INTO orders (key, worker, amount)
    VALUES (current_setting('orders.key'), current_setting('orders.worker')::int,
            (request ->> 'amount')::int)
    RETURNING * INTO o;
    RETURN idem_response(201, jsonb_build_object('order_id', o.id, 'worker', o.worker,
                                                 'amount', o.amount));
END
$$;
