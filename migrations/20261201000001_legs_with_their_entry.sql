-- A ledger entry's legs are written with the entry and never after: a leg
-- may only be inserted by the transaction that inserted its entry, at an
-- index the entry's (hashed) posting has, exactly as the posting states it.
-- Without this, a connection with the payment role could attach a forged
-- pair of legs to an old entry and move money between accounts while every
-- hash still verified (issue #14). Reconciliation checks the same from the
-- other side: the stored legs and columns must equal the hashed posting.
-- Leg indexes are the posting's: 0 to n - 1. With the primary key
-- (sequence, leg) and the count checked at commit below, every index of a
-- committed entry is taken, so no leg can be added to it later whatever
-- else is tried (a negative index would name a posting leg from the end in
-- jsonb and must not pass).
ALTER TABLE payment.ledger_legs ADD CONSTRAINT ledger_legs_index_from_zero CHECK (leg >= 0);
-- Every posting has a list of legs.
ALTER TABLE payment.ledger_entries ADD CONSTRAINT ledger_entries_posting_has_legs
    CHECK (jsonb_typeof(posting->'legs') = 'array');

CREATE FUNCTION payment.legs_only_with_their_entry() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    entry_inserted_by xid;
    posted jsonb;
BEGIN
    SELECT e.xmin, e.posting->'legs'->(NEW.leg::int)
      INTO entry_inserted_by, posted
      FROM payment.ledger_entries e
     WHERE e.sequence = NEW.sequence;
    IF NOT FOUND OR entry_inserted_by IS DISTINCT FROM pg_current_xact_id()::xid THEN
        RAISE EXCEPTION 'ledger leg % of entry % refused: legs are written only with their entry', NEW.leg, NEW.sequence
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    IF posted IS NULL
       OR NEW.leg < 0
       OR posted->>'account' IS DISTINCT FROM NEW.account_id
       OR posted->>'side' IS DISTINCT FROM NEW.side
       OR (posted->'amount'->>'amount_minor')::bigint IS DISTINCT FROM NEW.amount_minor
       OR posted->'amount'->>'currency' IS DISTINCT FROM NEW.currency::text THEN
        RAISE EXCEPTION 'ledger leg % of entry % refused: it is not the leg its posting states', NEW.leg, NEW.sequence
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    RETURN NEW;
END
$$;

CREATE TRIGGER ledger_legs_with_their_entry BEFORE INSERT ON payment.ledger_legs
    FOR EACH ROW EXECUTE FUNCTION payment.legs_only_with_their_entry();

-- And an entry's posting gets all of its legs: checked when the inserting
-- transaction commits, so a posting whose legs are missing never lands.
CREATE FUNCTION payment.entry_has_all_its_legs() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    stored bigint;
BEGIN
    SELECT count(*) INTO stored FROM payment.ledger_legs WHERE sequence = NEW.sequence;
    IF stored IS DISTINCT FROM jsonb_array_length(NEW.posting->'legs') THEN
        RAISE EXCEPTION 'ledger entry % refused: % legs stored, its posting has %', NEW.sequence, stored, jsonb_array_length(NEW.posting->'legs')
            USING ERRCODE = 'integrity_constraint_violation';
    END IF;
    RETURN NULL;
END
$$;

CREATE CONSTRAINT TRIGGER ledger_entries_have_all_their_legs AFTER INSERT ON payment.ledger_entries
    DEFERRABLE INITIALLY DEFERRED
    FOR EACH ROW EXECUTE FUNCTION payment.entry_has_all_its_legs();
