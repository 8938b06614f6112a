"""Factories and helpers for provider and agent-protocol tests (also used by tests/marketplace)."""

from __future__ import annotations

from typing import Any

import factory
from django.contrib.auth.models import User
from rest_framework.test import APIClient

from providers.catalog import catalog_sync
from providers.models import AcceleratorModel, Node, Provider, ProviderMembership
from providers.services import inventory_from_json, join_token_create, node_register


class UserFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = User

    username = factory.Sequence(lambda n: f"user{n}@example.test")
    email = factory.SelfAttribute("username")


class ProviderFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Provider

    name = factory.Sequence(lambda n: f"Provider {n}")
    slug = factory.Sequence(lambda n: f"provider-{n}")


def member_of(provider: Provider, user: User | None = None) -> User:
    user = user or UserFactory()
    ProviderMembership.objects.create(provider=provider, user=user, role=ProviderMembership.Role.OWNER)
    return user


def h100_inventory(count: int = 2, *, name: str = "node") -> dict[str, Any]:
    return {
        "host": {
            "cpu_model": "Intel(R) Xeon(R) Platinum 8480+",
            "cpu_cores": 224,
            "memory_mib": 2_097_152,
            "disk_gib": 30720,
            "nics": [{"name": "eth0", "speed_mbps": 25000, "mac": None}],
        },
        "devices": [
            {
                "vendor": "nvidia",
                "model": "NVIDIA H100 80GB HBM3",
                "index": i,
                "uuid": f"GPU-{name}-{i}",
                "bus_id": f"0000:{0x18 + i * 0x10:02x}:00.0",
                "memory_mib": 81559,
            }
            for i in range(count)
        ],
        "software": {"cuda": "12.4", "driver": "550.54.15"},
    }


def ensure_catalog() -> None:
    """The catalog is seeded by a migration, but a ``transaction=True`` test truncates every
    table when it ends; put it back for the tests that follow."""
    if not AcceleratorModel.objects.exists():
        catalog_sync(AcceleratorModel)


def registered_node(
    provider: Provider | None = None, *, name: str = "node-1", devices: int = 2, region: str = "cn-east"
) -> tuple[Node, str]:
    """A node registered through the real service; returns it with its credential."""
    ensure_catalog()
    provider = provider or ProviderFactory()
    issued = join_token_create(provider=provider, created_by=None, region=region, cluster="sh-a")
    registered = node_register(
        token=issued.token,
        name=name,
        agent_version="0.1.0",
        inventory=inventory_from_json(h100_inventory(devices, name=name)),
    )
    return registered.node, registered.credential


def agent_client(credential: str) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {credential}")
    return client
