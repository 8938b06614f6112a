from __future__ import annotations

from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError, CommandParser

from core.errors import ValidationFailed
from core.services import apikey_create


class Command(BaseCommand):
    help = "Create a hashed, scoped API key for USER and print it once."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("username")
        parser.add_argument("--scopes", default="read,trade", help="comma list of read,trade,provider")
        parser.add_argument("--name", default="cli")

    def handle(self, *args: Any, **options: Any) -> None:
        user = get_user_model().objects.filter(username=options["username"]).first()
        if user is None:
            raise CommandError(f"no user named {options['username']!r}")
        scopes = [s.strip() for s in options["scopes"].split(",") if s.strip()]
        try:
            issued = apikey_create(user=user, name=options["name"], scopes=scopes)
        except ValidationFailed as exc:
            raise CommandError(exc.message) from exc
        self.stdout.write(issued.secret)
