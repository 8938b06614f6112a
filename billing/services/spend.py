"""Spend controls: a buyer's monthly spend cap and low-balance e-mail (issue 13, item 3).

**What counts toward the cap ("spent this month")**: the charges posted to the buyer since the
start of the calendar month in UTC (settlement postings and reservation cancellation fees, net of
nothing else: top-ups and refunds are not spending), plus the money currently committed to the
buyer's open orders: open holds (``buyer_holds``) and unspent prepayment and reservation escrow
(``reservation_escrow``). Committed money that is later charged moves from the second term to the
first, and money returned to the wallet leaves both, so nothing is counted twice. An order is
refused (402, ``spend_cap_exceeded``) when spent-this-month plus its expected charge (the hold
or escrow ``order_place`` sets aside for it) would exceed the cap. A cap never stops a running job.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial

from django.conf import settings
from django.core.mail import send_mail
from django.db import transaction
from django.db.models import Sum
from django.utils import timezone
from django.utils.translation import gettext as _

from billing.models import Entry as LedgerEntry
from billing.models import SpendControl, TransactionKind
from billing.services.wallets import available_micros, buyer_accounts
from core.errors import InsufficientFunds, ValidationFailed
from core.money import format_amount

log = logging.getLogger(__name__)

# Postings that charge the buyer (money leaves the buyer's accounts for a provider or the platform).
CHARGE_KINDS = (TransactionKind.SETTLEMENT, TransactionKind.RESERVATION_CANCEL)
# The largest cap or threshold accepted: 1,000,000,000.00 (a typo should not overflow anything).
MAX_LIMIT_MICROS = 10**9 * 10**6


class _Unset:
    pass


UNSET = _Unset()


def month_start(now: datetime | None = None) -> datetime:
    """The first instant of the current calendar month, UTC."""
    now = (now or timezone.now()).astimezone(UTC)
    return now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)


@dataclass(frozen=True)
class SpendFigures:
    cap_micros: int | None
    charged_micros: int  # posted this month
    committed_micros: int  # open holds + escrow now
    currency: str

    @property
    def spent_micros(self) -> int:
        return self.charged_micros + self.committed_micros


def spend_figures(*, user_id: int, now: datetime | None = None, currency: str | None = None) -> SpendFigures:
    """The buyer's spending this month (see the module docstring). Reads only."""
    accounts = buyer_accounts(user_id=user_id, currency=currency)
    buyer_side = [accounts.wallet.pk, accounts.holds.pk, accounts.escrow.pk]
    charged = -(
        LedgerEntry.objects.filter(
            account_id__in=buyer_side,
            transaction__kind__in=CHARGE_KINDS,
            transaction__posted_at__gte=month_start(now),
        ).aggregate(total=Sum("amount_micros"))["total"]
        or 0
    )
    accounts.holds.refresh_from_db(fields=["balance_micros"])
    accounts.escrow.refresh_from_db(fields=["balance_micros"])
    control = SpendControl.objects.filter(user_id=user_id).first()
    return SpendFigures(
        cap_micros=control.monthly_cap_micros if control else None,
        charged_micros=max(charged, 0),
        committed_micros=max(accounts.holds.balance_micros, 0) + max(accounts.escrow.balance_micros, 0),
        currency=accounts.wallet.currency,
    )


def spend_controls_get(*, user_id: int) -> SpendControl:
    """The buyer's controls (an unsaved all-off row when none were set). Reads only."""
    return SpendControl.objects.filter(user_id=user_id).first() or SpendControl(user_id=user_id)


def _limit(value: int | None, field: str) -> int | None:
    if value is None:
        return None
    if not 0 <= value <= MAX_LIMIT_MICROS:
        message = _("Between 0 and %(max)s.") % {"max": format_amount(MAX_LIMIT_MICROS)}
        raise ValidationFailed(message, fields={field: message})
    return value


def spend_controls_set(
    *,
    user_id: int,
    monthly_cap_micros: int | _Unset | None = UNSET,
    low_balance_threshold_micros: int | _Unset | None = UNSET,
) -> SpendControl:
    """Set (or with None clear) the buyer's monthly cap and/or low-balance threshold.

    Contract: each limit is between 0 and ``MAX_LIMIT_MICROS`` (``ValidationFailed``); a limit
    not passed keeps its value. Changing the threshold re-arms the alert (the next crossing
    below it sends an e-mail). Locks the buyer's row, the same lock order placement takes.
    """
    changes: dict[str, object] = {}
    if not isinstance(monthly_cap_micros, _Unset):
        changes["monthly_cap_micros"] = _limit(monthly_cap_micros, "monthly_cap")
    if not isinstance(low_balance_threshold_micros, _Unset):
        changes["low_balance_threshold_micros"] = _limit(
            low_balance_threshold_micros, "low_balance_threshold"
        )
        changes["low_balance_alerted_at"] = None
    with transaction.atomic():
        control, _created = SpendControl.objects.select_for_update().get_or_create(user_id=user_id)
        for name, value in changes.items():
            setattr(control, name, value)
        control.save()
    log.info("billing.spend_controls_set user_id=%s fields=%s", user_id, sorted(changes))
    return control


def spend_cap_check(*, buyer_id: int, amount_micros: int, now: datetime | None = None) -> None:
    """Refuse an order whose expected charge would take the buyer past the monthly cap.

    Contract: call inside the order's transaction, before its hold is placed. Locks the buyer's
    ``SpendControl`` row, so concurrent orders of one buyer are checked one after the other (the
    first one's hold counts for the second). Raises ``InsufficientFunds`` (402) with code
    ``spend_cap_exceeded`` and the figures as fields: ``monthly_cap``, ``spent_this_month``,
    ``order_charge`` (decimal strings). No cap: nothing is locked or read.
    """
    control = SpendControl.objects.select_for_update().filter(user_id=buyer_id).first()
    if control is None or control.monthly_cap_micros is None:
        return
    figures = spend_figures(user_id=buyer_id, now=now)
    cap = control.monthly_cap_micros
    if figures.spent_micros + amount_micros <= cap:
        return
    amounts = {
        "cap": format_amount(cap),
        "spent": format_amount(figures.spent_micros),
        "charge": format_amount(amount_micros),
        "currency": figures.currency,
    }
    raise InsufficientFunds(
        _(
            "This order would pass your monthly spend cap of %(cap)s %(currency)s: %(spent)s %(currency)s "
            "spent or committed this month, and this order needs up to %(charge)s %(currency)s."
        )
        % amounts,
        fields={
            "monthly_cap": amounts["cap"],
            "spent_this_month": amounts["spent"],
            "order_charge": amounts["charge"],
        },
        code="spend_cap_exceeded",
    )


def low_balance_alerts_send(*, now: datetime | None = None) -> list[int]:
    """E-mail each buyer whose available balance fell below their threshold, once per crossing.

    Contract: a buyer below the threshold and not yet alerted is marked alerted with a
    conditional update (a concurrent run cannot send twice) and e-mailed after commit; a buyer
    back at or above it is re-armed. Buyers without an e-mail address are marked but not mailed.
    Safe to run twice. Returns the ids of the buyers e-mailed.
    """
    now = now or timezone.now()
    alerted: list[int] = []
    controls = SpendControl.objects.filter(low_balance_threshold_micros__isnull=False).select_related("user")
    for control in controls.order_by("pk"):
        assert control.low_balance_threshold_micros is not None
        wallet = buyer_accounts(user_id=control.user_id).wallet
        available = available_micros(wallet)
        below = available < control.low_balance_threshold_micros
        if not below:
            if control.low_balance_alerted_at is not None:
                SpendControl.objects.filter(pk=control.pk).update(low_balance_alerted_at=None)
            continue
        if control.low_balance_alerted_at is not None:
            continue
        with transaction.atomic():
            won = SpendControl.objects.filter(pk=control.pk, low_balance_alerted_at__isnull=True).update(
                low_balance_alerted_at=now
            )
            if won != 1 or not control.user.email:
                continue
            transaction.on_commit(partial(_send_low_balance, control, available, wallet.currency))
        alerted.append(control.user_id)
    return alerted


def _send_low_balance(control: SpendControl, available: int, currency: str) -> None:
    assert control.low_balance_threshold_micros is not None
    amounts = {
        "available": format_amount(available),
        "threshold": format_amount(control.low_balance_threshold_micros),
        "currency": currency,
    }
    try:
        _mail_low_balance(control, amounts)
    except Exception:  # a mail server outage must not fail settlement
        log.warning("billing.low_balance_mail_failed user_id=%s", control.user_id, exc_info=True)
        return
    log.info("billing.low_balance_mailed user_id=%s", control.user_id)


def _mail_low_balance(control: SpendControl, amounts: dict[str, str]) -> None:
    send_mail(
        subject=_("Suanli: your balance is below %(threshold)s %(currency)s") % amounts,
        message=_(
            "Your available balance is %(available)s %(currency)s, below the %(threshold)s %(currency)s "
            "you asked to be told about. Jobs are stopped with notice when the wallet cannot cover the "
            "next settlement interval; top up at %(url)s to keep them running."
        )
        % {**amounts, "url": f"{settings.SITE_URL}/wallet/"},
        from_email=None,
        recipient_list=[control.user.email],
        fail_silently=False,
    )
