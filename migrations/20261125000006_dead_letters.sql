-- Dead letters: messages a consumer could not handle after its bounded
-- retries, kept with the error so an operator can inspect and replay them.
-- Reconciliation reports any row here.
DO $$
DECLARE
    service text;
BEGIN
    FOREACH service IN ARRAY ARRAY['orders', 'inventory', 'payment'] LOOP
        EXECUTE format($sql$
            CREATE TABLE %1$I.dead_letters (
                id            bigserial PRIMARY KEY,
                message_id    text,
                message_type  text,
                order_id      text,
                error         text NOT NULL,
                payload       bytea NOT NULL,
                received_at   timestamptz NOT NULL
            )$sql$, service);
        EXECUTE format('GRANT SELECT ON %1$I.dead_letters TO saldo_reconcile', service);
    END LOOP;
END
$$;
GRANT SELECT, INSERT, DELETE ON orders.dead_letters TO saldo_order;
GRANT USAGE, SELECT ON SEQUENCE orders.dead_letters_id_seq TO saldo_order;
GRANT SELECT, INSERT, DELETE ON inventory.dead_letters TO saldo_inventory;
GRANT USAGE, SELECT ON SEQUENCE inventory.dead_letters_id_seq TO saldo_inventory;
GRANT SELECT, INSERT, DELETE ON payment.dead_letters TO saldo_payment;
GRANT USAGE, SELECT ON SEQUENCE payment.dead_letters_id_seq TO saldo_payment;

-- Reconciliation reads what changed since its last run; these make that cheap.
CREATE INDEX payment_payments_updated ON payment.payments (updated_at);
CREATE INDEX inventory_reservations_updated ON inventory.reservations (updated_at);
CREATE INDEX orders_orders_updated ON orders.orders (updated_at);
CREATE INDEX payment_ledger_recorded ON payment.ledger_entries (recorded_at);
