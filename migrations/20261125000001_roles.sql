-- Database roles: one per service, reaching only its own schema, and a
-- read-only role for reconciliation. Roles are cluster-wide, so they are
-- created only when absent (concurrent migrations of several databases may
-- race here; the loser's error is swallowed). They cannot log in until an
-- operator gives them a password: `ALTER ROLE saldo_order LOGIN PASSWORD ...`.
DO $$
DECLARE
    role_name text;
BEGIN
    FOREACH role_name IN ARRAY ARRAY['saldo_order', 'saldo_payment', 'saldo_inventory', 'saldo_reconcile'] LOOP
        IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = role_name) THEN
            BEGIN
                EXECUTE format('CREATE ROLE %I NOLOGIN', role_name);
            EXCEPTION WHEN duplicate_object OR unique_violation THEN
                NULL;
            END;
        END IF;
    END LOOP;
END
$$;
