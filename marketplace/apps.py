from typing import Any

from django.apps import AppConfig
from django.db.models.signals import post_migrate


def _ensure_carbon_indexes(sender: AppConfig, using: str = "default", **kwargs: Any) -> None:
    from django.db import connections

    from marketplace.services.offers import offer_carbon_indexes_ensure

    if using == "default" and connections[using].vendor == "postgresql":
        offer_carbon_indexes_ensure()


class MarketplaceConfig(AppConfig):
    name = "marketplace"
    verbose_name = "Marketplace"

    def ready(self) -> None:
        # The carbon sort's indexes depend on the settings' grid intensities: build them for the
        # settings of whoever migrates (the beat's refresh rebuilds them after a change too).
        post_migrate.connect(_ensure_carbon_indexes, sender=self, dispatch_uid="marketplace-carbon-indexes")
