"""Database-enforced ledger rules: balanced transactions, append-only journal, immutable statements.

They hold for any writer, including raw SQL that bypasses the ORM.
"""

from django.db import migrations

FORWARD = """
CREATE FUNCTION billing_check_transaction_balanced() RETURNS trigger AS $$
DECLARE
    total numeric;
BEGIN
    SELECT COALESCE(SUM(amount_micros), 0) INTO total
      FROM billing_entry WHERE transaction_id = NEW.transaction_id;
    IF total <> 0 THEN
        RAISE EXCEPTION 'billing transaction % does not balance: entries sum to %', NEW.transaction_id, total
            USING ERRCODE = 'check_violation';
    END IF;
    RETURN NULL;
END
$$ LANGUAGE plpgsql;

-- Deferred: the legs of one transaction are inserted one statement at a time, so the sum is
-- checked at COMMIT, once every leg is in.
CREATE CONSTRAINT TRIGGER billing_entry_balanced
    AFTER INSERT ON billing_entry
    DEFERRABLE INITIALLY DEFERRED
    FOR EACH ROW EXECUTE FUNCTION billing_check_transaction_balanced();

CREATE FUNCTION billing_reject_change() RETURNS trigger AS $$
BEGIN
    RAISE EXCEPTION '% is append-only: % rejected (post a reversing transaction instead)', TG_TABLE_NAME, TG_OP
        USING ERRCODE = 'restrict_violation';
END
$$ LANGUAGE plpgsql;

CREATE TRIGGER billing_entry_append_only
    BEFORE UPDATE OR DELETE ON billing_entry
    FOR EACH ROW EXECUTE FUNCTION billing_reject_change();
CREATE TRIGGER billing_transaction_append_only
    BEFORE UPDATE OR DELETE ON billing_transaction
    FOR EACH ROW EXECUTE FUNCTION billing_reject_change();

CREATE TRIGGER billing_statement_finalized_immutable
    BEFORE UPDATE OR DELETE ON billing_statement
    FOR EACH ROW WHEN (OLD.status = 'finalized')
    EXECUTE FUNCTION billing_reject_change();
"""

BACKWARD = """
DROP TRIGGER IF EXISTS billing_statement_finalized_immutable ON billing_statement;
DROP TRIGGER IF EXISTS billing_transaction_append_only ON billing_transaction;
DROP TRIGGER IF EXISTS billing_entry_append_only ON billing_entry;
DROP TRIGGER IF EXISTS billing_entry_balanced ON billing_entry;
DROP FUNCTION IF EXISTS billing_reject_change();
DROP FUNCTION IF EXISTS billing_check_transaction_balanced();
"""


class Migration(migrations.Migration):
    dependencies = [("billing", "0002_ledger")]

    operations = [migrations.RunSQL(FORWARD, BACKWARD)]
