-- The order an audit record concerns (ADR 0017), so an order's story shows
-- every operator action on it: its own interventions (target order:ID) and
-- the redrive or discard of its dead letters (target dead_letter:SERVICE:ID,
-- which names no order). Records written before this column have none;
-- their targets still find the order's own interventions.
DO $$
DECLARE
    service text;
BEGIN
    FOREACH service IN ARRAY ARRAY['orders', 'inventory', 'payment'] LOOP
        EXECUTE format('ALTER TABLE %1$I.audit ADD COLUMN order_id text', service);
        EXECUTE format('CREATE INDEX %1$s_audit_order ON %1$I.audit (order_id, id) WHERE order_id IS NOT NULL', service);
    END LOOP;
END
$$;
