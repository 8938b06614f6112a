from typing import Any

from django.core.management.base import BaseCommand

from providers.catalog import catalog_sync
from providers.models import AcceleratorModel


class Command(BaseCommand):
    help = "Upsert the hardware catalog from providers/fixtures/accelerator_models.json."

    def handle(self, *args: Any, **options: Any) -> None:
        count = catalog_sync(AcceleratorModel)
        self.stdout.write(f"catalog: {count} accelerator models")
