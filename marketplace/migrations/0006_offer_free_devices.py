"""A stored free-device count per node, so the offer list reads it instead of counting devices and
slots per offer (issue 12, item 4).

``FreeDeviceCount`` is written only by ``offer_free_devices_refresh``. Every write that can change a
node's count marks the node in ``FreeDeviceChange`` from a PostgreSQL statement trigger, in the
writer's transaction: slot inserts, deletes and updates of ``live``/``span`` (matching, release,
cancellation, provisioning, admin, raw SQL alike) and device inserts, deletes and health or node
changes (the heartbeat flush updates health in raw SQL from ``providers``, which must not import
the marketplace). Triggers, not calls from each service, because a forgotten call site would make
the list silently wrong, and an insert into a queue table, not an update of a count row, because an
update would make every writer wait on the node's row (new lock-order deadlocks beside the
matcher's node locks).
"""

import django.db.models.deletion
from django.db import migrations, models

TRIGGERS_SQL = """
-- A node's free devices at epoch second at_epoch, counted from the rows: healthy devices minus
-- live slots whose span holds the device's point (span = device id x 2^40 + epoch seconds). The
-- one definition, used by the refresh and by the offer list for nodes changed since it ran.
CREATE FUNCTION marketplace_node_free_devices(p_node_id bigint, at_epoch bigint) RETURNS bigint
LANGUAGE sql STABLE AS $$
    SELECT (SELECT count(*) FROM providers_device d WHERE d.node_id = p_node_id AND d.health = 'ok')
         - (SELECT count(*) FROM marketplace_allocationslot s
              JOIN providers_device d ON d.id = s.device_id
             WHERE d.node_id = p_node_id AND s.live
               AND s.span @> (s.device_id * 1099511627776 + at_epoch))
$$;

-- The node of each device is looked up by primary key per changed row (a correlated subquery), not
-- joined: the planner knows nothing of a transition table's size and would hash-join the whole
-- device table for a statement of eight slots.
CREATE FUNCTION marketplace_slot_marks_node() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        INSERT INTO marketplace_freedevicechange (node_id)
        SELECT DISTINCT (SELECT d.node_id FROM providers_device d WHERE d.id = s.device_id)
          FROM (SELECT DISTINCT device_id FROM new_rows) s;
    ELSIF TG_OP = 'DELETE' THEN
        INSERT INTO marketplace_freedevicechange (node_id)
        SELECT DISTINCT (SELECT d.node_id FROM providers_device d WHERE d.id = s.device_id)
          FROM (SELECT DISTINCT device_id FROM old_rows) s;
    ELSE
        -- Any update marks its nodes (slots are updated only to release or shorten them); comparing
        -- old and new spans row by row cost more than the occasional needless recount.
        INSERT INTO marketplace_freedevicechange (node_id)
        SELECT DISTINCT (SELECT d.node_id FROM providers_device d WHERE d.id = c.device_id)
          FROM (SELECT device_id FROM new_rows UNION SELECT device_id FROM old_rows) c;
    END IF;
    RETURN NULL;
END $$;

CREATE FUNCTION marketplace_device_marks_node() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        INSERT INTO marketplace_freedevicechange (node_id) SELECT DISTINCT node_id FROM new_rows;
    ELSIF TG_OP = 'DELETE' THEN
        INSERT INTO marketplace_freedevicechange (node_id) SELECT DISTINCT node_id FROM old_rows;
    ELSE
        INSERT INTO marketplace_freedevicechange (node_id)
        SELECT n.node_id FROM new_rows n JOIN old_rows o ON o.id = n.id
         WHERE n.health IS DISTINCT FROM o.health OR n.node_id <> o.node_id
        UNION
        SELECT o.node_id FROM new_rows n JOIN old_rows o ON o.id = n.id WHERE n.node_id <> o.node_id;
    END IF;
    RETURN NULL;
END $$;

-- TRUNCATE has no transition table: forget every stored count instead.
CREATE FUNCTION marketplace_free_devices_forget() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM marketplace_freedevicecount;
    RETURN NULL;
END $$;

CREATE TRIGGER slot_marks_node_insert AFTER INSERT ON marketplace_allocationslot
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION marketplace_slot_marks_node();
CREATE TRIGGER slot_marks_node_update AFTER UPDATE ON marketplace_allocationslot
    REFERENCING NEW TABLE AS new_rows OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION marketplace_slot_marks_node();
CREATE TRIGGER slot_marks_node_delete AFTER DELETE ON marketplace_allocationslot
    REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT EXECUTE FUNCTION marketplace_slot_marks_node();
CREATE TRIGGER slot_forgets_counts AFTER TRUNCATE ON marketplace_allocationslot
    FOR EACH STATEMENT EXECUTE FUNCTION marketplace_free_devices_forget();

CREATE TRIGGER device_marks_node_insert AFTER INSERT ON providers_device
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION marketplace_device_marks_node();
CREATE TRIGGER device_marks_node_update AFTER UPDATE ON providers_device
    REFERENCING NEW TABLE AS new_rows OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION marketplace_device_marks_node();
CREATE TRIGGER device_marks_node_delete AFTER DELETE ON providers_device
    REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT EXECUTE FUNCTION marketplace_device_marks_node();
CREATE TRIGGER device_forgets_counts AFTER TRUNCATE ON providers_device
    FOR EACH STATEMENT EXECUTE FUNCTION marketplace_free_devices_forget();
"""

DROP_TRIGGERS_SQL = """
DROP TRIGGER IF EXISTS slot_marks_node_insert ON marketplace_allocationslot;
DROP TRIGGER IF EXISTS slot_marks_node_update ON marketplace_allocationslot;
DROP TRIGGER IF EXISTS slot_marks_node_delete ON marketplace_allocationslot;
DROP TRIGGER IF EXISTS slot_forgets_counts ON marketplace_allocationslot;
DROP TRIGGER IF EXISTS device_marks_node_insert ON providers_device;
DROP TRIGGER IF EXISTS device_marks_node_update ON providers_device;
DROP TRIGGER IF EXISTS device_marks_node_delete ON providers_device;
DROP TRIGGER IF EXISTS device_forgets_counts ON providers_device;
DROP FUNCTION IF EXISTS marketplace_slot_marks_node();
DROP FUNCTION IF EXISTS marketplace_device_marks_node();
DROP FUNCTION IF EXISTS marketplace_free_devices_forget();
DROP FUNCTION IF EXISTS marketplace_node_free_devices(bigint, bigint);
"""


class Migration(migrations.Migration):
    dependencies = [
        ("marketplace", "0005_node_reliability_from_offers"),
        ("providers", "0003_node_reliability"),
    ]

    operations = [
        migrations.CreateModel(
            name="FreeDeviceChange",
            fields=[
                (
                    "id",
                    models.BigAutoField(
                        auto_created=True, primary_key=True, serialize=False, verbose_name="ID"
                    ),
                ),
                ("node_id", models.BigIntegerField(db_index=True)),
            ],
        ),
        migrations.CreateModel(
            name="FreeDeviceCount",
            fields=[
                (
                    "node",
                    models.OneToOneField(
                        on_delete=django.db.models.deletion.CASCADE,
                        primary_key=True,
                        related_name="free_device_count",
                        serialize=False,
                        to="providers.node",
                    ),
                ),
                ("devices", models.IntegerField()),
                ("valid_from", models.BigIntegerField()),
                ("valid_until", models.BigIntegerField()),
            ],
        ),
        # Existing slots and devices need no marks: no count is stored yet, and a node without a
        # stored count is counted on read until the first refresh.
        migrations.RunSQL(TRIGGERS_SQL, DROP_TRIGGERS_SQL),
    ]
