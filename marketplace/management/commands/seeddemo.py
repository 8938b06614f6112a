"""Demo data for `make run`: a buyer, two providers, and nodes of different vendors.

Idempotent: running it again changes nothing that exists.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand
from django.db import transaction

from providers.models import AcceleratorModel, Device, Node, NodeStatus, Provider, ProviderMembership

DEMO_PASSWORDS = {
    "buyer@demo.suanli": "demo-buyer-pass",
    "provider@demo.suanli": "demo-provider-pass",
    "dc@demo.suanli": "demo-provider-pass",
}

# (provider slug, node name, region, cluster, catalog match name, device count, memory MiB, software)
DEMO_NODES = [
    ("huaxia", "hx-sh-h100-01", "cn-east", "sh-a", "NVIDIA H100 80GB HBM3", 8, 81559,
     {"cuda": "12.4", "driver": "550.54.15"}),
    ("huaxia", "hx-sh-910b-01", "cn-east", "sh-a", "910B1", 4, 65536, {"cann": "8.0.RC1"}),
    ("pearl", "pr-gz-mlu370-01", "cn-south", "gz-1", "MLU370-X8", 2, 49152, {"neuware": "3.7.2"}),
    ("pearl", "pr-gz-cpu-01", "cn-south", "gz-1", "x86-64 CPU", 1, 0, {}),
]  # fmt: skip


class Command(BaseCommand):
    help = "Create the demo buyer, providers and nodes (idempotent)."

    @transaction.atomic
    def handle(self, *args: Any, **options: Any) -> None:
        users = get_user_model()
        for email, password in DEMO_PASSWORDS.items():
            if not users.objects.filter(username=email).exists():
                users.objects.create_user(username=email, email=email, password=password)
        if not users.objects.filter(username="admin").exists():
            users.objects.create_superuser("admin", "admin@demo.suanli", "demo-admin-pass")

        providers = {
            "huaxia": ("Huaxia Compute", "provider@demo.suanli"),
            "pearl": ("Pearl River Data Centre", "dc@demo.suanli"),
        }
        for slug, (name, owner_email) in providers.items():
            provider, _ = Provider.objects.get_or_create(slug=slug, defaults={"name": name})
            ProviderMembership.objects.get_or_create(
                provider=provider,
                user=users.objects.get(username=owner_email),
                defaults={"role": ProviderMembership.Role.OWNER},
            )

        for slug, node_name, region, cluster, match_name, count, memory_mib, software in DEMO_NODES:
            provider = Provider.objects.get(slug=slug)
            node, created = Node.objects.get_or_create(
                provider=provider,
                name=node_name,
                defaults={
                    "region": region,
                    "cluster": cluster,
                    "status": NodeStatus.OFFLINE,
                    "software": software,
                    "cpu_model": "Intel(R) Xeon(R) Platinum 8480+",
                    "cpu_cores": 112,
                    "memory_mib": 2_048_000,
                    "disk_gib": 7680,
                },
            )
            if created:
                accelerator = AcceleratorModel.objects.get(match_names__contains=[match_name])
                Device.objects.bulk_create(
                    Device(
                        node=node,
                        accelerator=accelerator,
                        index=index,
                        uuid=f"DEMO-{node_name}-{index}",
                        memory_mib=memory_mib,
                    )
                    for index in range(count)
                )
        self.stdout.write("demo data ready")


def start_demo_agents(
    *, server_url: str, env: dict[str, str], var_dir: Path
) -> list[tuple[str, subprocess.Popen[bytes]]]:
    """Simulated provider agents for the demo nodes (started once the agent daemon exists)."""
    return []
