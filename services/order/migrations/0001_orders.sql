-- Orders, numbered per organization: the placing transaction bumps the
-- organization's counter, so a rolled-back order gives its number back and
-- the sequence has no gaps.
CREATE TABLE order_orders (
    id TEXT PRIMARY KEY,
    org_id TEXT NOT NULL,
    user_id TEXT NOT NULL,
    number BIGINT NOT NULL,
    status TEXT NOT NULL,
    session_id TEXT NOT NULL,
    -- JSON: the cart lines as ordered, the customer, the delivery.
    items TEXT NOT NULL,
    total_minor BIGINT NOT NULL,
    currency TEXT NOT NULL,
    customer TEXT NOT NULL,
    delivery TEXT NOT NULL,
    execution_id TEXT,
    failure_reason TEXT NOT NULL,
    cancel_reason TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
CREATE UNIQUE INDEX order_number ON order_orders (org_id, number);
CREATE INDEX order_newest ON order_orders (org_id, created_at DESC, id DESC);
CREATE INDEX order_newest_of_user ON order_orders (org_id, user_id, created_at DESC, id DESC);
CREATE INDEX order_pending ON order_orders (status, updated_at);

CREATE TABLE order_counters (
    org_id TEXT PRIMARY KEY,
    last_number BIGINT NOT NULL
);

-- Idempotency: one row per (organization, user, key), claimed before the
-- order is made, with the request's fingerprint and the order id it will
-- have (so a retry after a crash reuses the same stock reservation).
CREATE TABLE order_requests (
    org_id TEXT NOT NULL,
    user_id TEXT NOT NULL,
    idempotency_key TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    order_id TEXT NOT NULL,
    placed BOOLEAN NOT NULL,
    claimed_at BIGINT NOT NULL,
    PRIMARY KEY (org_id, user_id, idempotency_key)
);
CREATE INDEX order_requests_unplaced ON order_requests (placed, claimed_at);

-- What still has to reach another service for an order: its fulfillment
-- execution ('enqueue'), or the return of its stock ('release'). Written
-- in the transaction that makes the need, removed once done.
CREATE TABLE order_outbox (
    order_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    org_id TEXT NOT NULL,
    attempts BIGINT NOT NULL,
    next_attempt_at BIGINT NOT NULL,
    PRIMARY KEY (order_id, kind)
);
CREATE INDEX order_outbox_due ON order_outbox (next_attempt_at);
