-- The payment service's schema: payments per order, wallets, ledger
-- accounts, the append-only ledger, the inbox, the outbox and idempotency keys.
CREATE SCHEMA payment;

CREATE TABLE payment.payments (
    order_id      text PRIMARY KEY,
    version       bigint NOT NULL CHECK (version > 0),
    customer_id   text NOT NULL,
    amount_minor  bigint NOT NULL,
    currency      char(3) NOT NULL,
    state         text NOT NULL CHECK (state IN ('captured', 'failed', 'refunded', 'cancelled_before_charge')),
    body          jsonb NOT NULL,
    updated_at    timestamptz NOT NULL
);

CREATE TABLE payment.wallets (
    customer_id  text PRIMARY KEY,
    version      bigint NOT NULL CHECK (version > 0),
    currency     char(3) NOT NULL,
    body         jsonb NOT NULL
);

CREATE TABLE payment.accounts (
    account_id     text PRIMARY KEY,
    version        bigint NOT NULL CHECK (version > 0),
    kind           text NOT NULL CHECK (kind IN ('wallet', 'merchant_revenue', 'funding')),
    currency       char(3) NOT NULL,
    balance_minor  bigint NOT NULL,
    held_minor     bigint NOT NULL CHECK (held_minor >= 0),
    -- Wallets and revenue never go below zero available; funding may.
    CHECK (kind = 'funding' OR balance_minor - held_minor >= 0)
);

-- One row: the end of the hash chain. Sealing an entry locks it, so
-- entries get gap-free sequence numbers and each links to its predecessor.
CREATE TABLE payment.chain_head (
    id        smallint PRIMARY KEY CHECK (id = 1),
    sequence  bigint NOT NULL,
    hash      bytea NOT NULL
);
INSERT INTO payment.chain_head (id, sequence, hash) VALUES (1, 0, decode(repeat('00', 32), 'hex'));

CREATE TABLE payment.ledger_entries (
    sequence        bigint PRIMARY KEY CHECK (sequence > 0),
    posting_id      text NOT NULL UNIQUE,
    recorded_at     timestamptz NOT NULL,
    reverses        text REFERENCES payment.ledger_entries (posting_id),
    order_id        text,
    purpose         text NOT NULL,
    correlation_id  text,
    traceparent     text,
    -- The posting as the sdk defines it; the hash covers its canonical form.
    posting         jsonb NOT NULL,
    previous_hash   bytea NOT NULL,
    hash            bytea NOT NULL UNIQUE
);
CREATE INDEX payment_ledger_order ON payment.ledger_entries (order_id) WHERE order_id IS NOT NULL;

CREATE TABLE payment.ledger_legs (
    sequence      bigint NOT NULL REFERENCES payment.ledger_entries (sequence),
    leg           smallint NOT NULL,
    account_id    text NOT NULL REFERENCES payment.accounts (account_id),
    side          text NOT NULL CHECK (side IN ('debit', 'credit')),
    amount_minor  bigint NOT NULL CHECK (amount_minor > 0),
    currency      char(3) NOT NULL,
    PRIMARY KEY (sequence, leg)
);
CREATE INDEX payment_ledger_legs_account ON payment.ledger_legs (account_id);

-- The ledger is append-only: no UPDATE, DELETE or TRUNCATE, whoever asks.
CREATE FUNCTION payment.refuse_ledger_change() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'the ledger is append-only: % on % is refused', TG_OP, TG_TABLE_NAME
        USING ERRCODE = 'insufficient_privilege';
END
$$;
CREATE TRIGGER ledger_entries_append_only BEFORE UPDATE OR DELETE ON payment.ledger_entries
    FOR EACH ROW EXECUTE FUNCTION payment.refuse_ledger_change();
CREATE TRIGGER ledger_entries_no_truncate BEFORE TRUNCATE ON payment.ledger_entries
    FOR EACH STATEMENT EXECUTE FUNCTION payment.refuse_ledger_change();
CREATE TRIGGER ledger_legs_append_only BEFORE UPDATE OR DELETE ON payment.ledger_legs
    FOR EACH ROW EXECUTE FUNCTION payment.refuse_ledger_change();
CREATE TRIGGER ledger_legs_no_truncate BEFORE TRUNCATE ON payment.ledger_legs
    FOR EACH STATEMENT EXECUTE FUNCTION payment.refuse_ledger_change();

CREATE TABLE payment.inbox (
    message_id   text PRIMARY KEY,
    fingerprint  bytea NOT NULL,
    received_at  timestamptz NOT NULL
);

CREATE TABLE payment.outbox (
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
CREATE INDEX payment_outbox_pending ON payment.outbox (sequence) WHERE published_at IS NULL;

CREATE TABLE payment.idempotency_keys (
    key         text PRIMARY KEY,
    version     bigint NOT NULL CHECK (version > 0),
    record      jsonb NOT NULL,
    expires_at  timestamptz NOT NULL
);
