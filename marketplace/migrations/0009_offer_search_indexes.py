"""Indexes for the offer search's orderings (issue 12, item 4).

``GET /api/v1/offers`` pages through listed offers in the order of its keyset (term price then id;
reliability descending, then the on-demand price, then id). With these partial indexes the page
is a walk of the index that stops after ``limit + 1`` matching offers, not a hash join and sort of
every offer (``marketplace.selectors.offer_search_page``). Partial on ``listed``: only listed
offers are ever searched. Raw SQL (not ``Meta.indexes``) because the reliability index is
descending on one column and the model's field order says nothing about the search.
"""

from django.db import migrations

INDEXES = {
    "offer_listed_on_demand_idx": "(on_demand_price_micros, id)",
    "offer_listed_reserved_idx": "(reserved_price_micros, id)",
    "offer_listed_spot_idx": "(spot_floor_micros, id)",
    "offer_listed_reliability_idx": "(reliability DESC, on_demand_price_micros, id)",
}


class Migration(migrations.Migration):
    dependencies = [
        ("marketplace", "0008_webhooks"),
    ]

    operations = [
        migrations.RunSQL(
            f"CREATE INDEX {name} ON marketplace_offer {columns} WHERE listed",
            f"DROP INDEX IF EXISTS {name}",
        )
        for name, columns in INDEXES.items()
    ]
