-- Operators' audit trail (ADR 0017): one append-only table per service
-- schema, written in the same transaction as the intervention's effect.
-- Who (the gateway's principal), which key (its name, never the secret),
-- what (action and target), the decision the dry run showed, and when.
-- As with the ledger, a trigger refuses UPDATE, DELETE and TRUNCATE, and
-- the service role may only read and append. Reconciliation may read it.
DO $$
DECLARE
    service text;
    role_name text;
BEGIN
    FOREACH service IN ARRAY ARRAY['orders', 'inventory', 'payment'] LOOP
        role_name := CASE service WHEN 'orders' THEN 'saldo_order' ELSE 'saldo_' || service END;
        EXECUTE format($sql$
            CREATE TABLE %1$I.audit (
                id         bigserial PRIMARY KEY,
                principal  text NOT NULL,
                key_name   text NOT NULL,
                action     text NOT NULL,
                target     text NOT NULL,
                dry_run    jsonb NOT NULL,
                at         timestamptz NOT NULL
            )$sql$, service);
        EXECUTE format('CREATE INDEX %1$s_audit_target ON %1$I.audit (target, id)', service);
        EXECUTE format($sql$
            CREATE FUNCTION %1$I.refuse_audit_change() RETURNS trigger
            LANGUAGE plpgsql AS $body$
            BEGIN
                RAISE EXCEPTION 'the audit trail is append-only: %% on %% is refused', TG_OP, TG_TABLE_NAME
                    USING ERRCODE = 'insufficient_privilege';
            END
            $body$
            $sql$, service);
        EXECUTE format('CREATE TRIGGER audit_append_only BEFORE UPDATE OR DELETE ON %1$I.audit
            FOR EACH ROW EXECUTE FUNCTION %1$I.refuse_audit_change()', service);
        EXECUTE format('CREATE TRIGGER audit_no_truncate BEFORE TRUNCATE ON %1$I.audit
            FOR EACH STATEMENT EXECUTE FUNCTION %1$I.refuse_audit_change()', service);
        EXECUTE format('GRANT SELECT, INSERT ON %1$I.audit TO %2$I', service, role_name);
        EXECUTE format('GRANT USAGE, SELECT ON SEQUENCE %1$I.audit_id_seq TO %2$I', service, role_name);
        EXECUTE format('GRANT SELECT ON %1$I.audit TO saldo_reconcile', service);
    END LOOP;
END
$$;
