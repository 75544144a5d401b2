-- The inventory service's schema: stock per SKU, reservations per order,
-- the inbox, the outbox and idempotency keys.
CREATE SCHEMA inventory;

CREATE TABLE inventory.stock (
    sku               text PRIMARY KEY,
    version           bigint NOT NULL CHECK (version > 0),
    on_hand           bigint NOT NULL CHECK (on_hand >= 0),
    reserved          bigint NOT NULL CHECK (reserved >= 0),
    unit_price_minor  bigint NOT NULL CHECK (unit_price_minor > 0),
    currency          char(3) NOT NULL,
    -- Stock never goes negative. The decider guarantees it; the database
    -- refuses to store a row that says otherwise.
    CHECK (reserved <= on_hand)
);

CREATE TABLE inventory.reservations (
    order_id    text PRIMARY KEY,
    version     bigint NOT NULL CHECK (version > 0),
    state       text NOT NULL CHECK (state IN ('held', 'committed', 'released', 'rejected', 'cancelled')),
    body        jsonb NOT NULL,
    updated_at  timestamptz NOT NULL
);
CREATE INDEX inventory_reservations_held ON inventory.reservations (updated_at) WHERE state = 'held';

CREATE TABLE inventory.inbox (
    message_id   text PRIMARY KEY,
    fingerprint  bytea NOT NULL,
    received_at  timestamptz NOT NULL
);

CREATE TABLE inventory.outbox (
    sequence       bigserial PRIMARY KEY,
    message_id     text NOT NULL UNIQUE,
    order_id       text NOT NULL,
    message_type   text NOT NULL,
    correlation_id text NOT NULL,
    traceparent    text NOT NULL,
    envelope       bytea NOT NULL,
    created_at     timestamptz NOT NULL,
    published_at   timestamptz
);
CREATE INDEX inventory_outbox_pending ON inventory.outbox (sequence) WHERE published_at IS NULL;

CREATE TABLE inventory.idempotency_keys (
    key         text PRIMARY KEY,
    version     bigint NOT NULL CHECK (version > 0),
    record      jsonb NOT NULL,
    expires_at  timestamptz NOT NULL
);
