-- The order service's schema: orders with their saga, the outbox, the
-- inbox and the HTTP idempotency keys.
CREATE SCHEMA orders;

CREATE TABLE orders.orders (
    order_id       text PRIMARY KEY,
    version        bigint NOT NULL CHECK (version > 0),
    customer_id    text NOT NULL,
    currency       char(3) NOT NULL,
    amount_minor   bigint,
    status         text NOT NULL CHECK (status IN ('PENDING', 'CONFIRMED', 'CANCELLED')),
    cancel_reason  text,
    -- What the saga waits for, and until when (NULL once it ended).
    awaiting       text NOT NULL,
    deadline_at    timestamptz,
    -- The whole row as the sdk defines it (OrderRow), including the saga
    -- instance and its history with timestamps.
    body           jsonb NOT NULL,
    created_at     timestamptz NOT NULL,
    updated_at     timestamptz NOT NULL
);
CREATE INDEX orders_due ON orders.orders (deadline_at) WHERE deadline_at IS NOT NULL;
CREATE INDEX orders_status ON orders.orders (status, updated_at);

CREATE TABLE orders.outbox (
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
CREATE INDEX orders_outbox_pending ON orders.outbox (sequence) WHERE published_at IS NULL;

CREATE TABLE orders.inbox (
    message_id   text PRIMARY KEY,
    fingerprint  bytea NOT NULL,
    received_at  timestamptz NOT NULL
);

CREATE TABLE orders.idempotency_keys (
    key         text PRIMARY KEY,
    version     bigint NOT NULL CHECK (version > 0),
    record      jsonb NOT NULL,
    expires_at  timestamptz NOT NULL
);
