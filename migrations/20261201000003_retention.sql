-- Retention (ADR 0015): every service purges its own inbox receipts past
-- the inbox horizon and its expired idempotency records, oldest first, in
-- bounded statements. These indexes let each statement find its rows
-- without scanning the table. The service roles already hold DELETE on
-- their inbox and idempotency tables (20261125000005_grants.sql); this file
-- grants nothing new.
CREATE INDEX orders_inbox_received_at ON orders.inbox (received_at);
CREATE INDEX inventory_inbox_received_at ON inventory.inbox (received_at);
CREATE INDEX payment_inbox_received_at ON payment.inbox (received_at);
CREATE INDEX orders_idempotency_expires_at ON orders.idempotency_keys (expires_at);
CREATE INDEX inventory_idempotency_expires_at ON inventory.idempotency_keys (expires_at);
CREATE INDEX payment_idempotency_expires_at ON payment.idempotency_keys (expires_at);
