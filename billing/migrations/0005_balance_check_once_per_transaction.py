"""Check each journal transaction's balance once per firing, not once per leg.

The deferred row trigger still fires for every entry row, but remembers (in a transaction-local
setting) the journal transaction it has just found balanced; the following legs of that same
transaction skip the SUM. Any new INSERT or COPY into billing_entry clears the memory first (a
statement-level trigger), so a row added later is always checked against the full sum.
"""

from django.db import migrations

FORWARD = """
CREATE OR REPLACE FUNCTION billing_check_transaction_balanced() RETURNS trigger AS $$
DECLARE
    total numeric;
BEGIN
    IF current_setting('billing.balanced_txn', true) = NEW.transaction_id::text THEN
        RETURN NULL;
    END IF;
    SELECT COALESCE(SUM(amount_micros), 0) INTO total
      FROM billing_entry WHERE transaction_id = NEW.transaction_id;
    IF total <> 0 THEN
        RAISE EXCEPTION 'billing transaction % does not balance: entries sum to %', NEW.transaction_id, total
            USING ERRCODE = 'check_violation';
    END IF;
    PERFORM set_config('billing.balanced_txn', NEW.transaction_id::text, true);
    RETURN NULL;
END
$$ LANGUAGE plpgsql;

CREATE FUNCTION billing_forget_balanced() RETURNS trigger AS $$
BEGIN
    PERFORM set_config('billing.balanced_txn', '', true);
    RETURN NULL;
END
$$ LANGUAGE plpgsql;

CREATE TRIGGER billing_entry_forget_balanced
    BEFORE INSERT ON billing_entry
    FOR EACH STATEMENT EXECUTE FUNCTION billing_forget_balanced();
"""

BACKWARD = """
DROP TRIGGER IF EXISTS billing_entry_forget_balanced ON billing_entry;
DROP FUNCTION IF EXISTS billing_forget_balanced();
CREATE OR REPLACE FUNCTION billing_check_transaction_balanced() RETURNS trigger AS $$
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
"""


class Migration(migrations.Migration):
    dependencies = [("billing", "0004_entry_index_fillfactor")]

    operations = [migrations.RunSQL(FORWARD, BACKWARD)]
