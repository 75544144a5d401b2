-- Idempotency keys are namespaced (ADR 0013): a record is stored under
-- "KIND NAMESPACE KEY", where KIND is `principal` (the client the gateway
-- authenticated) or `customer` (no gateway vouched for the client), so two
-- clients using the same Idempotency-Key never meet. The sdk writes that
-- text (`saldo_idempotency::ScopedKey`); this file only moves the records
-- written before it into their customer's namespace, so that a client
-- retrying across the upgrade without a gateway still gets its replay.

-- An order's record names its order, which names its customer.
UPDATE orders.idempotency_keys AS k
SET key = 'customer ' || o.customer_id || ' ' || k.key
FROM orders.orders AS o
WHERE position(' ' IN k.key) = 0
  AND o.order_id = k.record -> 'state' -> 'outcome' ->> 'order_id';

-- A top-up's record names the wallet's owner.
UPDATE payment.idempotency_keys
SET key = 'customer ' || (record -> 'state' -> 'outcome' ->> 'customer') || ' ' || key
WHERE position(' ' IN key) = 0
  AND record -> 'state' -> 'outcome' ->> 'customer' IS NOT NULL;

-- What is left cannot be attributed to a namespace (no deciders write
-- such records); no lookup could ever find it again.
DELETE FROM orders.idempotency_keys WHERE position(' ' IN key) = 0;
DELETE FROM payment.idempotency_keys WHERE position(' ' IN key) = 0;
DELETE FROM inventory.idempotency_keys WHERE position(' ' IN key) = 0;

-- A second line of defence: only scoped keys are stored from now on.
DO $$
DECLARE
    service text;
BEGIN
    FOREACH service IN ARRAY ARRAY['orders', 'inventory', 'payment'] LOOP
        EXECUTE format($sql$
            ALTER TABLE %1$I.idempotency_keys ADD CONSTRAINT idempotency_key_scoped
            CHECK (key ~ '^(principal|customer) [A-Za-z0-9._:-]{1,64} [!-~]{1,255}$')
            $sql$, service);
    END LOOP;
END
$$;
