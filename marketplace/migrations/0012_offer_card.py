"""Stored offer cards: each offer's API JSON as text fragments, kept by triggers (issue 12, item 4).

``GET /api/v1/offers`` built some forty JSON fields per offer per request in SQL (~25 us an offer,
most of a page's time once the page's rows are found by an index walk). ``OfferCard`` holds those
fields already formatted, written in the writer's transaction by statement triggers on every table
the card shows: offers (insert, update), nodes, providers and accelerator models (update, when a
shown column changes). The search joins a page's cards and adds what no row write changes (free
devices, currency, the term's price per PFLOP-hour, the carbon figure, the time zone of
``updated_at``).

The formatting functions here (``marketplace_amount``, ``marketplace_half_even``,
``marketplace_json_text``) are the SQL twins of ``core.money.format_amount``, Python's half-even
``f"{value:.Nf}"`` and ``json.dumps(ensure_ascii=False)`` of a string, and the search uses them
too. A change to the card's fields is a new migration replacing ``marketplace_offer_cards_write``
(and rewriting every card), alongside ``OfferSerializer``: tests/marketplace/
test_offer_search_fast_path.py compares the two byte for byte.
"""

import django.db.models.deletion
from django.db import migrations, models

FUNCTIONS_SQL = r"""
-- The product's own scale, as the ORM computes it (see OfferCard.power_pue).
ALTER TABLE marketplace_offercard ALTER COLUMN power_pue TYPE numeric;

-- core.money.format_amount of integer micro-units: at least two decimals, the rest kept.
CREATE FUNCTION marketplace_amount(micros bigint) RETURNS text LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE WHEN micros < 0 THEN '-' ELSE '' END || (abs(micros) / 1000000)::text || '.'
        || rpad(rtrim(lpad(mod(abs(micros), 1000000)::text, 6, '0'), '0'),
                greatest(2, length(rtrim(lpad(mod(abs(micros), 1000000)::text, 6, '0'), '0'))), '0')
$$;

-- f"{Decimal(value):.{places}f}": Python rounds half to even, PostgreSQL's round() half away
-- from zero. Multiplying numerics is exact, so the digits are Python's. NULL stays NULL.
CREATE FUNCTION marketplace_half_even(value numeric, places integer) RETURNS text
LANGUAGE sql IMMUTABLE AS $$
    SELECT round(
        (floor(value * 10::numeric ^ places)
         + CASE WHEN value * 10::numeric ^ places - floor(value * 10::numeric ^ places) > 0.5
                  OR (value * 10::numeric ^ places - floor(value * 10::numeric ^ places) = 0.5
                      AND mod(floor(value * 10::numeric ^ places), 2) <> 0)
                THEN 1 ELSE 0 END)
        / 10::numeric ^ places, places)::text
$$;

-- A JSON string as json.dumps(ensure_ascii=False) writes it; null for NULL.
CREATE FUNCTION marketplace_json_text(value text) RETURNS text LANGUAGE sql IMMUTABLE AS $$
    SELECT coalesce(to_json(value)::text, 'null')
$$;

-- The price per dense FP16 PFLOP-hour as the API writes it: int() of the per-PFLOP micro-units
-- (truncated toward zero), formatted; null for a model without an FP16 figure.
CREATE FUNCTION marketplace_per_pflop_json(price_micros bigint, fp16_tflops numeric) RETURNS text
LANGUAGE sql IMMUTABLE AS $$
    SELECT coalesce(
        '"' || marketplace_amount(trunc(CASE WHEN fp16_tflops > 0
                                             THEN (price_micros * 1000) / fp16_tflops END)::bigint)
        || '"', 'null')
$$;

-- Write (insert or replace) the cards of these offers from their rows.
CREATE FUNCTION marketplace_offer_cards_write(offer_ids bigint[]) RETURNS void LANGUAGE sql AS $$
    INSERT INTO marketplace_offercard AS c (
        offer_id, head, software, mid, body, pflop_on_demand, pflop_reserved, pflop_spot,
        power_pue, region, tail, updated_at, listed, on_demand_price_micros, reserved_price_micros,
        spot_floor_micros, accelerator_id)
    SELECT o.id,
           '{"id":' || o.id || ',"node":{"id":' || n.id
               || ',"name":' || marketplace_json_text(n.name)
               || ',"provider":' || marketplace_json_text(p.name)
               || ',"region":' || marketplace_json_text(n.region)
               || ',"cluster":' || marketplace_json_text(n.cluster)
               || ',"software":',
           n.software::text,
           ',"pue":"' || n.pue::text
               || '","measured_power_w":' || coalesce('"' || n.measured_power_w::text || '"', 'null')
               || ',"verified":' || CASE WHEN n.verified_at IS NULL THEN 'false' ELSE 'true' END
               || '},"accelerator":{"id":' || a.id
               || ',"vendor":' || marketplace_json_text(a.vendor)
               || ',"model":' || marketplace_json_text(a.model)
               || ',"kind":' || marketplace_json_text(a.kind)
               || ',"memory_gib":' || a.memory_gib
               || ',"fp16_tflops":"' || a.fp16_tflops::text
               || '","int8_tops":"' || a.int8_tops::text
               || '","tdp_watts":' || a.tdp_watts
               || '},"device_count":' || o.device_count
               || ',"free_devices":',
           ',"region":' || marketplace_json_text(o.region)
               || ',"on_demand_price":"' || marketplace_amount(o.on_demand_price_micros)
               || '","reserved_price":"' || marketplace_amount(o.reserved_price_micros)
               || '","spot_floor":"' || marketplace_amount(o.spot_floor_micros)
               || '","volume_price":"' || marketplace_amount(o.volume_price_micros)
               || '","currency":',
           marketplace_per_pflop_json(o.on_demand_price_micros, a.fp16_tflops),
           marketplace_per_pflop_json(o.reserved_price_micros, a.fp16_tflops),
           marketplace_per_pflop_json(o.spot_floor_micros, a.fp16_tflops),
           COALESCE(n.measured_power_w, a.tdp_watts) * n.pue,
           o.region,
           ',"tops_per_watt":'
               || coalesce('"' || marketplace_half_even(
                      CASE WHEN a.int8_tops > 0
                           THEN a.int8_tops / NULLIF(COALESCE(n.measured_power_w, a.tdp_watts), 0) END,
                      2) || '"', 'null')
               || ',"reliability":"' || o.reliability::text
               || '","min_rental_minutes":' || o.min_rental_minutes
               || ',"max_rental_hours":' || o.max_rental_hours
               || ',"updated_at":"',
           o.updated_at,
           o.listed, o.on_demand_price_micros, o.reserved_price_micros, o.spot_floor_micros,
           o.accelerator_id
      FROM marketplace_offer o
      JOIN providers_node n ON n.id = o.node_id
      JOIN providers_provider p ON p.id = n.provider_id
      JOIN providers_acceleratormodel a ON a.id = o.accelerator_id
     WHERE o.id = ANY (offer_ids)
    ON CONFLICT (offer_id) DO UPDATE SET
        head = EXCLUDED.head, software = EXCLUDED.software, mid = EXCLUDED.mid,
        body = EXCLUDED.body, pflop_on_demand = EXCLUDED.pflop_on_demand,
        pflop_reserved = EXCLUDED.pflop_reserved, pflop_spot = EXCLUDED.pflop_spot,
        power_pue = EXCLUDED.power_pue, region = EXCLUDED.region, tail = EXCLUDED.tail,
        updated_at = EXCLUDED.updated_at, listed = EXCLUDED.listed,
        on_demand_price_micros = EXCLUDED.on_demand_price_micros,
        reserved_price_micros = EXCLUDED.reserved_price_micros,
        spot_floor_micros = EXCLUDED.spot_floor_micros, accelerator_id = EXCLUDED.accelerator_id
$$;

-- Offers: every insert and update rewrites the rows' cards (a card shows most offer columns).
CREATE FUNCTION marketplace_offer_writes_cards() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM marketplace_offer_cards_write(ARRAY(SELECT id FROM new_rows));
    RETURN NULL;
END $$;

-- Nodes, providers, accelerator models: only rows whose shown columns changed (the heartbeat
-- flush updates every node's heartbeat time every few seconds). Each changed row's offers are
-- looked up by index, row by row: the planner knows nothing of a transition table's size.
CREATE FUNCTION marketplace_node_writes_cards() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM marketplace_offer_cards_write(ARRAY(
        SELECT o.id
          FROM new_rows nn JOIN old_rows oo ON oo.id = nn.id
          CROSS JOIN LATERAL (SELECT id FROM marketplace_offer WHERE node_id = nn.id) o
         WHERE (nn.name, nn.region, nn.cluster, nn.software, nn.pue, nn.measured_power_w,
                nn.verified_at IS NULL, nn.provider_id)
               IS DISTINCT FROM
               (oo.name, oo.region, oo.cluster, oo.software, oo.pue, oo.measured_power_w,
                oo.verified_at IS NULL, oo.provider_id)));
    RETURN NULL;
END $$;

CREATE FUNCTION marketplace_provider_writes_cards() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM marketplace_offer_cards_write(ARRAY(
        SELECT o.id
          FROM new_rows nn JOIN old_rows oo ON oo.id = nn.id
          JOIN providers_node n ON n.provider_id = nn.id
          JOIN marketplace_offer o ON o.node_id = n.id
         WHERE nn.name IS DISTINCT FROM oo.name));
    RETURN NULL;
END $$;

CREATE FUNCTION marketplace_accelerator_writes_cards() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM marketplace_offer_cards_write(ARRAY(
        SELECT o.id
          FROM new_rows nn JOIN old_rows oo ON oo.id = nn.id
          JOIN marketplace_offer o ON o.accelerator_id = nn.id
         WHERE (nn.vendor, nn.model, nn.kind, nn.memory_gib, nn.fp16_tflops, nn.int8_tops, nn.tdp_watts)
               IS DISTINCT FROM
               (oo.vendor, oo.model, oo.kind, oo.memory_gib, oo.fp16_tflops, oo.int8_tops, oo.tdp_watts)));
    RETURN NULL;
END $$;

CREATE TRIGGER offer_writes_cards_insert AFTER INSERT ON marketplace_offer
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION marketplace_offer_writes_cards();
CREATE TRIGGER offer_writes_cards_update AFTER UPDATE ON marketplace_offer
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION marketplace_offer_writes_cards();
CREATE TRIGGER node_writes_cards AFTER UPDATE ON providers_node
    REFERENCING NEW TABLE AS new_rows OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION marketplace_node_writes_cards();
CREATE TRIGGER provider_writes_cards AFTER UPDATE ON providers_provider
    REFERENCING NEW TABLE AS new_rows OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION marketplace_provider_writes_cards();
CREATE TRIGGER accelerator_writes_cards AFTER UPDATE ON providers_acceleratormodel
    REFERENCING NEW TABLE AS new_rows OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION marketplace_accelerator_writes_cards();

-- The carbon sort's indexes hold the settings' grid intensities: they are built after
-- migrating (marketplace.services.offers.offer_carbon_indexes_ensure).

-- The offers there already.
SELECT marketplace_offer_cards_write(ARRAY(SELECT id FROM marketplace_offer));
"""

DROP_SQL = """
DROP TRIGGER IF EXISTS offer_writes_cards_insert ON marketplace_offer;
DROP TRIGGER IF EXISTS offer_writes_cards_update ON marketplace_offer;
DROP TRIGGER IF EXISTS node_writes_cards ON providers_node;
DROP TRIGGER IF EXISTS provider_writes_cards ON providers_provider;
DROP TRIGGER IF EXISTS accelerator_writes_cards ON providers_acceleratormodel;
DROP FUNCTION IF EXISTS marketplace_offer_writes_cards();
DROP FUNCTION IF EXISTS marketplace_node_writes_cards();
DROP FUNCTION IF EXISTS marketplace_provider_writes_cards();
DROP FUNCTION IF EXISTS marketplace_accelerator_writes_cards();
DROP FUNCTION IF EXISTS marketplace_offer_cards_write(bigint[]);
DROP FUNCTION IF EXISTS marketplace_per_pflop_json(bigint, numeric);
DROP FUNCTION IF EXISTS marketplace_json_text(text);
DROP FUNCTION IF EXISTS marketplace_half_even(numeric, integer);
DROP FUNCTION IF EXISTS marketplace_amount(bigint);
"""


class Migration(migrations.Migration):
    dependencies = [
        ("marketplace", "0011_volume_unpaid_since"),
        ("providers", "0005_node_public_address"),
    ]

    operations = [
        migrations.CreateModel(
            name="OfferCard",
            fields=[
                (
                    "offer",
                    models.OneToOneField(
                        on_delete=django.db.models.deletion.CASCADE,
                        primary_key=True,
                        related_name="card",
                        serialize=False,
                        to="marketplace.offer",
                    ),
                ),
                ("head", models.TextField()),
                ("software", models.TextField()),
                ("mid", models.TextField()),
                ("body", models.TextField()),
                ("pflop_on_demand", models.TextField()),
                ("pflop_reserved", models.TextField()),
                ("pflop_spot", models.TextField()),
                ("power_pue", models.DecimalField(decimal_places=6, max_digits=30)),
                ("region", models.CharField(max_length=32)),
                ("tail", models.TextField()),
                ("updated_at", models.DateTimeField()),
                ("listed", models.BooleanField()),
                ("on_demand_price_micros", models.BigIntegerField()),
                ("reserved_price_micros", models.BigIntegerField()),
                ("spot_floor_micros", models.BigIntegerField()),
                ("accelerator_id", models.BigIntegerField()),
            ],
        ),
        migrations.RunSQL(FUNCTIONS_SQL, DROP_SQL),
    ]
