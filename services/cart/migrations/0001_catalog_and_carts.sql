-- Products per organization. stock NULL = unlimited; it never goes below
-- zero (the CHECK is the last line of defence behind the conditional
-- updates).
CREATE TABLE cart_products (
    id TEXT PRIMARY KEY,
    org_id TEXT NOT NULL,
    sku TEXT NOT NULL,
    name TEXT NOT NULL,
    category TEXT NOT NULL,
    price_minor BIGINT NOT NULL,
    currency TEXT NOT NULL,
    stock BIGINT CHECK (stock IS NULL OR stock >= 0),
    active BOOLEAN NOT NULL,
    description TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    UNIQUE (org_id, sku)
);
CREATE INDEX cart_products_newest ON cart_products (org_id, created_at DESC, id DESC);

-- One reservation per order, written first in its transaction, so two
-- first reservations of one order serialize on it; released_at marks it
-- given back, so neither a retried reservation nor a retried release moves
-- stock twice.
CREATE TABLE cart_reservation_orders (
    org_id TEXT NOT NULL,
    order_id TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    released_at BIGINT,
    PRIMARY KEY (org_id, order_id)
);

-- What each reservation took, one row per product.
CREATE TABLE cart_reservations (
    org_id TEXT NOT NULL,
    order_id TEXT NOT NULL,
    product_id TEXT NOT NULL,
    quantity BIGINT NOT NULL,
    tracked BOOLEAN NOT NULL,
    PRIMARY KEY (org_id, order_id, product_id)
);

-- One cart per session; version increases on every change.
CREATE TABLE cart_carts (
    org_id TEXT NOT NULL,
    session_id TEXT NOT NULL,
    user_id TEXT NOT NULL,
    version BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    PRIMARY KEY (org_id, session_id)
);

CREATE TABLE cart_items (
    org_id TEXT NOT NULL,
    session_id TEXT NOT NULL,
    id TEXT NOT NULL,
    product_id TEXT NOT NULL,
    sku TEXT NOT NULL,
    name TEXT NOT NULL,
    quantity BIGINT NOT NULL,
    options TEXT NOT NULL,
    unit_price_minor BIGINT NOT NULL,
    currency TEXT NOT NULL,
    added_at BIGINT NOT NULL,
    PRIMARY KEY (org_id, session_id, id)
);
