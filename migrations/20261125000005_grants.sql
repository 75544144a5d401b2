-- Privileges: each service reaches its own schema only; the payment role
-- may read and append the ledger but never change it; reconciliation reads
-- everything and writes nothing.
REVOKE ALL ON SCHEMA orders, inventory, payment FROM PUBLIC;

GRANT USAGE ON SCHEMA orders TO saldo_order;
GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA orders TO saldo_order;
GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA orders TO saldo_order;

GRANT USAGE ON SCHEMA inventory TO saldo_inventory;
GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA inventory TO saldo_inventory;
GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA inventory TO saldo_inventory;

GRANT USAGE ON SCHEMA payment TO saldo_payment;
GRANT SELECT, INSERT, UPDATE, DELETE ON payment.payments, payment.wallets, payment.accounts,
    payment.inbox, payment.outbox, payment.idempotency_keys TO saldo_payment;
GRANT SELECT, UPDATE ON payment.chain_head TO saldo_payment;
GRANT SELECT, INSERT ON payment.ledger_entries, payment.ledger_legs TO saldo_payment;
GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA payment TO saldo_payment;

GRANT USAGE ON SCHEMA orders, inventory, payment TO saldo_reconcile;
GRANT SELECT ON ALL TABLES IN SCHEMA orders, inventory, payment TO saldo_reconcile;
