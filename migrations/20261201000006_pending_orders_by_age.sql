-- The order service's saga-age gauge reads the oldest pending order every
-- few seconds (saldo_saga_oldest_pending_seconds): this partial index
-- answers min(created_at) of the PENDING orders without scanning them.
CREATE INDEX orders_pending_created ON orders.orders (created_at) WHERE status = 'PENDING';
