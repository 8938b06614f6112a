"""``manage.py fundwallet USER AMOUNT``: demo money for a buyer wallet, without Stripe.

For ``make run`` and other development setups, where Stripe Checkout is not reachable: the credit
is the same balanced ledger transaction a paid top-up posts (Stripe clearing -> wallet), marked
"development credit". Refused when ``SUANLI_ENV=production``.
"""

from __future__ import annotations

import uuid
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db.models import Q

from billing.services.wallets import available_micros, buyer_accounts, wallet_fund_development
from core.errors import SuanliError
from core.money import MoneyFormatError, format_amount, parse_amount


class Command(BaseCommand):
    help = "Credit USER's wallet with AMOUNT of development money (refused in production)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("user", help="username or e-mail address of the buyer")
        parser.add_argument("amount", help=f"decimal amount in {settings.SUANLI_CURRENCY}, e.g. 100.00")
        parser.add_argument(
            "--key", default="", help="idempotency key: running again with the same key credits nothing more"
        )

    def handle(self, *args: Any, **options: Any) -> None:
        if settings.PRODUCTION:
            raise CommandError(
                "fundwallet is refused when SUANLI_ENV=production; buyers top up through Stripe."
            )
        name = options["user"]
        users = get_user_model().objects.filter(Q(username=name) | Q(email__iexact=name)).order_by("pk")
        if users.count() != 1:
            raise CommandError(
                f"no user named {name!r}"
                if not users
                else f"{name!r} matches several users; give the username"
            )
        user = users.get()
        try:
            amount = parse_amount(options["amount"], max_places=2)
        except MoneyFormatError:
            raise CommandError(f"{options['amount']!r} is not an amount like 100.00") from None
        key = f"dev-fund:{options['key'] or uuid.uuid4().hex}"
        try:
            posted = wallet_fund_development(user_id=user.pk, amount_micros=amount, idempotency_key=key)
        except SuanliError as exc:
            raise CommandError(exc.message) from exc
        wallet = buyer_accounts(user_id=user.pk).wallet
        done = "credited" if posted is not None else "already credited under this key;"
        self.stdout.write(
            f"{user.username}: {done} {format_amount(amount)} {wallet.currency}, "
            f"available {format_amount(available_micros(wallet))} {wallet.currency}"
        )
