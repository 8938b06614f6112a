"""Billing models: the ledger, wallets, holds, leases, usage evidence, Stripe records, statements.

All money is integer micro-units (``*_micros``) with a currency code. Models hold fields,
constraints and cheap predicates only; every write goes through ``billing.services``.
"""

from __future__ import annotations

from django.conf import settings
from django.db import models


class UsageSample(models.Model):
    """Metering evidence posted by an agent: one window of one job. ``(job_id, seq)`` is unique,
    so a resent batch (the agent spools and resends until acknowledged) changes nothing."""

    job_id = models.BigIntegerField()
    seq = models.BigIntegerField()
    window_start = models.DateTimeField()
    window_end = models.DateTimeField()
    device_count = models.PositiveIntegerField()
    utilization_pct = models.DecimalField(max_digits=5, decimal_places=2, null=True, blank=True)
    memory_used_mib = models.BigIntegerField(null=True, blank=True)
    power_w = models.DecimalField(max_digits=8, decimal_places=1, null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["job_id", "seq"], name="usage_sample_job_seq_unique"),
            models.CheckConstraint(
                condition=models.Q(window_end__gte=models.F("window_start")),
                name="usage_sample_window_ordered",
            ),
        ]
        indexes = [models.Index(fields=["job_id", "window_start"], name="usage_sample_job_window")]

    def __str__(self) -> str:
        return f"usage job={self.job_id} seq={self.seq}"


# --- Chart of accounts and journal ---------------------------------------------------------------


class AccountKind(models.TextChoices):
    BUYER_WALLET = "buyer_wallet", "Buyer wallet"
    BUYER_HOLDS = "buyer_holds", "Buyer holds"
    RESERVATION_ESCROW = "reservation_escrow", "Reservation escrow"
    PROVIDER_PAYABLE = "provider_payable", "Provider payable"
    PROVIDER_IN_TRANSIT = "provider_in_transit", "Provider in transit"
    PLATFORM_FEE = "platform_fee", "Platform fee revenue"
    STRIPE_CLEARING = "stripe_clearing", "Stripe clearing"
    ROUNDING = "rounding", "Rounding"
    WRITE_OFF = "write_off", "Write-off (refunds of spent money)"


BUYER_KINDS = (AccountKind.BUYER_WALLET, AccountKind.BUYER_HOLDS, AccountKind.RESERVATION_ESCROW)
PROVIDER_KINDS = (AccountKind.PROVIDER_PAYABLE, AccountKind.PROVIDER_IN_TRANSIT)


class Account(models.Model):
    """One ledger account. Sign convention: an account's balance is the sum of its entries and is
    what its holder owns (a buyer wallet of +50 holds 50.00); money arriving from outside shows as a
    negative ``stripe_clearing`` balance. ``balance_micros`` is a cache of that sum, updated in the
    same transaction as the entries under a row lock, and checked by reconciliation."""

    kind = models.CharField(max_length=24, choices=AccountKind.choices)
    currency = models.CharField(max_length=3)
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="billing_accounts",
    )
    provider_id = models.BigIntegerField(null=True, blank=True)
    balance_micros = models.BigIntegerField(default=0)
    # Buyer wallets only: how far below zero the wallet may go.
    credit_limit_micros = models.BigIntegerField(default=0)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["kind", "currency", "user"],
                condition=models.Q(user__isnull=False),
                name="account_user_unique",
            ),
            models.UniqueConstraint(
                fields=["kind", "currency", "provider_id"],
                condition=models.Q(provider_id__isnull=False),
                name="account_provider_unique",
            ),
            models.UniqueConstraint(
                fields=["kind", "currency"],
                condition=models.Q(user__isnull=True, provider_id__isnull=True),
                name="account_system_unique",
            ),
            models.CheckConstraint(
                condition=~(models.Q(user__isnull=False) & models.Q(provider_id__isnull=False)),
                name="account_single_owner",
            ),
        ]

    def __str__(self) -> str:
        owner = (
            f"user={self.user_id}"
            if self.user_id
            else f"provider={self.provider_id}"
            if self.provider_id
            else "system"
        )
        return f"{self.kind} {self.currency} {owner}"


class TransactionKind(models.TextChoices):
    TOP_UP = "top_up", "Top-up"
    REFUND = "refund", "Refund"
    HOLD_PLACE = "hold_place", "Hold placed"
    HOLD_RELEASE = "hold_release", "Hold released"
    HOLD_CAPTURE = "hold_capture", "Hold captured"
    SETTLEMENT = "settlement", "Settlement"
    ESCROW_REFUND = "escrow_refund", "Unused prepayment returned"
    RESERVATION = "reservation", "Reservation booked"
    RESERVATION_CANCEL = "reservation_cancel", "Reservation cancelled"
    PAYOUT = "payout", "Payout"
    PAYOUT_PAID = "payout_paid", "Payout paid"
    PAYOUT_REVERSAL = "payout_reversal", "Payout reversed"


class Transaction(models.Model):
    """A balanced set of entries. Append-only (a trigger rejects UPDATE and DELETE); the sum of
    its entries is zero (a deferred constraint trigger checks it at commit)."""

    kind = models.CharField(max_length=24, choices=TransactionKind.choices)
    idempotency_key = models.CharField(max_length=200, unique=True)
    currency = models.CharField(max_length=3)
    memo = models.CharField(max_length=200, blank=True)
    # Not indexed: statements reach transactions through the (account, transaction) entry index.
    posted_at = models.DateTimeField()

    def __str__(self) -> str:
        return f"{self.kind} {self.idempotency_key}"


class Entry(models.Model):
    """One leg of a transaction: a signed amount on one account (append-only)."""

    transaction = models.ForeignKey(Transaction, on_delete=models.PROTECT, related_name="entries")
    # No index of its own: the (account, transaction) index below serves lookups by account.
    account = models.ForeignKey(Account, on_delete=models.PROTECT, related_name="entries", db_index=False)
    amount_micros = models.BigIntegerField()
    # The lease this leg bills (statements group by it); a plain id, like everything cross-app.
    # Not indexed: statements find entries by account, and every index taxes settlement.
    lease_id = models.BigIntegerField(null=True, blank=True)

    class Meta:
        verbose_name_plural = "entries"
        indexes = [models.Index(fields=["account", "transaction"], name="entry_account_txn")]

    def __str__(self) -> str:
        return f"{self.account_id} {self.amount_micros:+d}"


# --- Holds ---------------------------------------------------------------------------------------


class HoldStatus(models.TextChoices):
    OPEN = "open", "Open"
    RELEASED = "released", "Released"
    CAPTURED = "captured", "Captured"


class Hold(models.Model):
    """Money set aside from a wallet for an order that has not started. Resolves exactly once."""

    TRANSITIONS = {HoldStatus.OPEN: {HoldStatus.RELEASED, HoldStatus.CAPTURED}}

    buyer = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="holds")
    currency = models.CharField(max_length=3)
    amount_micros = models.BigIntegerField()
    reference = models.CharField(max_length=200, unique=True)
    status = models.CharField(max_length=12, choices=HoldStatus.choices, default=HoldStatus.OPEN)
    lease_id = models.BigIntegerField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    resolved_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [
            models.CheckConstraint(condition=models.Q(amount_micros__gt=0), name="hold_amount_positive")
        ]

    def __str__(self) -> str:
        return f"hold {self.reference} {self.status}"


# --- Leases --------------------------------------------------------------------------------------


class LeaseKind(models.TextChoices):
    ON_DEMAND = "on_demand", "On-demand"
    SPOT = "spot", "Spot"
    RESERVED = "reserved", "Reserved"
    # A persistent volume: ``device_count`` is its size in GiB, the rate is per GiB-hour.
    VOLUME = "volume", "Volume"


class LeaseStatus(models.TextChoices):
    OPEN = "open", "Open"
    PAUSED = "paused", "Paused"
    CLOSED = "closed", "Closed"
    CANCELLED = "cancelled", "Cancelled"


class Lease(models.Model):
    """Priced time on ``device_count`` devices of one provider for one job.

    The exact (unrounded) cost of finished rate segments is kept in ``accrued_micro_seconds``
    (rate micros x devices x seconds; divide by 3600 for micros), so the cumulative charge at any
    instant is one expression with no segment query. ``charged_micros`` / ``fee_micros`` are what
    was already posted; settlement posts the difference.
    """

    buyer = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="leases")
    provider_id = models.BigIntegerField(db_index=True)
    job_id = models.BigIntegerField(null=True, blank=True, db_index=True)
    kind = models.CharField(max_length=12, choices=LeaseKind.choices, default=LeaseKind.ON_DEMAND)
    currency = models.CharField(max_length=3)
    device_count = models.PositiveIntegerField()
    status = models.CharField(max_length=12, choices=LeaseStatus.choices, default=LeaseStatus.OPEN)
    idempotency_key = models.CharField(max_length=200, unique=True)
    fee_bps = models.PositiveIntegerField()

    rate_micros = models.BigIntegerField()  # current rate per device-hour
    # The 60-second minimum is priced at the opening rate, so later rate changes never move it.
    opening_rate_micros = models.BigIntegerField(default=0)
    started_at = models.DateTimeField()
    segment_started_at = models.DateTimeField(null=True, blank=True)  # null while paused or closed
    ends_at = models.DateTimeField(null=True, blank=True)  # scheduled end (reserved) or actual end
    accrued_micro_seconds = models.DecimalField(max_digits=40, decimal_places=6, default=0)
    accrued_seconds = models.DecimalField(max_digits=20, decimal_places=6, default=0)

    charged_micros = models.BigIntegerField(default=0)
    fee_micros = models.BigIntegerField(default=0)
    prepaid_micros = models.BigIntegerField(default=0)  # escrow still available to this lease
    billed_through = models.DateTimeField(null=True, blank=True)
    settle_seq = models.PositiveIntegerField(default=0)
    settled_final = models.BooleanField(default=False)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        indexes = [
            models.Index(fields=["id"], condition=models.Q(settled_final=False), name="lease_unsettled"),
            models.Index(fields=["buyer", "status"], name="lease_buyer_status"),
        ]
        constraints = [
            models.CheckConstraint(condition=models.Q(device_count__gt=0), name="lease_devices_positive"),
            models.CheckConstraint(condition=models.Q(rate_micros__gte=0), name="lease_rate_nonnegative"),
        ]

    def __str__(self) -> str:
        return f"lease {self.pk} job={self.job_id} {self.status}"

    @property
    def is_live(self) -> bool:
        return self.status in (LeaseStatus.OPEN, LeaseStatus.PAUSED)


class LeaseSegment(models.Model):
    """One stretch of billable time at one rate (audit trail and statement lines)."""

    lease = models.ForeignKey(Lease, on_delete=models.CASCADE, related_name="segments")
    rate_micros = models.BigIntegerField()
    device_count = models.PositiveIntegerField()
    started_at = models.DateTimeField()
    ended_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["lease", "started_at", "id"]

    def __str__(self) -> str:
        return f"segment lease={self.lease_id} {self.started_at}..{self.ended_at}"


class ReservationStatus(models.TextChoices):
    CONFIRMED = "confirmed", "Confirmed"
    CANCELLED = "cancelled", "Cancelled"


class Reservation(models.Model):
    """A reserved booking: the full amount sits in escrow and its lease releases it over time."""

    buyer = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="reservations")
    lease = models.OneToOneField(Lease, on_delete=models.PROTECT, related_name="reservation")
    amount_micros = models.BigIntegerField()
    status = models.CharField(
        max_length=12, choices=ReservationStatus.choices, default=ReservationStatus.CONFIRMED
    )
    cancel_fee_micros = models.BigIntegerField(default=0)
    created_at = models.DateTimeField(auto_now_add=True)
    cancelled_at = models.DateTimeField(null=True, blank=True)

    def __str__(self) -> str:
        return f"reservation {self.pk} {self.status}"


# --- Stripe: top-ups, webhook events, Connect accounts, payouts --------------------------------


class TopUpStatus(models.TextChoices):
    CREATED = "created", "Created"
    OPEN = "open", "Awaiting payment"
    COMPLETED = "completed", "Completed"


class TopUp(models.Model):
    buyer = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="top_ups")
    amount_micros = models.BigIntegerField()
    currency = models.CharField(max_length=3)
    client_key = models.CharField(max_length=200)
    status = models.CharField(max_length=12, choices=TopUpStatus.choices, default=TopUpStatus.CREATED)
    stripe_session_id = models.CharField(max_length=255, null=True, blank=True, unique=True)
    stripe_payment_intent_id = models.CharField(max_length=255, null=True, blank=True, unique=True)
    checkout_url = models.URLField(max_length=1000, blank=True)
    credited_micros = models.BigIntegerField(default=0)
    refunded_micros = models.BigIntegerField(default=0)
    created_at = models.DateTimeField(auto_now_add=True)
    completed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["buyer", "client_key"], name="topup_client_key_unique"),
            models.CheckConstraint(condition=models.Q(amount_micros__gt=0), name="topup_amount_positive"),
        ]

    def __str__(self) -> str:
        return f"top-up {self.pk} {self.status}"


class WebhookEvent(models.Model):
    """Every Stripe event we accepted, once (unique event id). ``ref`` is the object the event
    waits on (a payment intent), so an event that arrived too early can be applied later."""

    event_id = models.CharField(max_length=255, unique=True)
    type = models.CharField(max_length=100)
    ref = models.CharField(max_length=255, blank=True, db_index=True)
    payload = models.JSONField()
    received_at = models.DateTimeField(auto_now_add=True)
    processed_at = models.DateTimeField(null=True, blank=True)

    def __str__(self) -> str:
        return f"{self.type} {self.event_id}"


class PayoutAccount(models.Model):
    """A provider's Stripe Connect Express account."""

    provider_id = models.BigIntegerField(unique=True)
    stripe_account_id = models.CharField(max_length=255, unique=True)
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return f"provider {self.provider_id} {self.stripe_account_id}"


class PayoutStatus(models.TextChoices):
    PENDING = "pending", "Pending"
    SUBMITTED = "submitted", "Submitted"
    PAID = "paid", "Paid"
    FAILED = "failed", "Failed"


class Payout(models.Model):
    # paid -> failed is a transfer reversed by Stripe after it went through.
    TRANSITIONS = {
        PayoutStatus.PENDING: {PayoutStatus.SUBMITTED, PayoutStatus.FAILED},
        PayoutStatus.SUBMITTED: {PayoutStatus.PAID, PayoutStatus.FAILED},
        PayoutStatus.PAID: {PayoutStatus.FAILED},
    }

    provider_id = models.BigIntegerField(db_index=True)
    currency = models.CharField(max_length=3)
    amount_micros = models.BigIntegerField()
    status = models.CharField(max_length=12, choices=PayoutStatus.choices, default=PayoutStatus.PENDING)
    stripe_account_id = models.CharField(max_length=255)
    stripe_transfer_id = models.CharField(max_length=255, null=True, blank=True, unique=True)
    failure_reason = models.CharField(max_length=500, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [
            models.CheckConstraint(condition=models.Q(amount_micros__gt=0), name="payout_amount_positive"),
            # One payout in flight per provider and currency.
            models.UniqueConstraint(
                fields=["provider_id", "currency"],
                condition=models.Q(status__in=["pending", "submitted"]),
                name="payout_one_in_flight",
            ),
        ]

    def __str__(self) -> str:
        return f"payout {self.pk} {self.status}"


# --- Statements ----------------------------------------------------------------------------------


class StatementKind(models.TextChoices):
    BUYER_INVOICE = "buyer_invoice", "Buyer invoice"
    PROVIDER_EARNINGS = "provider_earnings", "Provider earnings statement"


class StatementStatus(models.TextChoices):
    DRAFT = "draft", "Draft"
    FINALIZED = "finalized", "Finalized"


class Statement(models.Model):
    """A monthly buyer invoice or provider earnings statement. Drafts are rebuilt while the month
    runs; once finalized a trigger rejects any UPDATE or DELETE."""

    kind = models.CharField(max_length=20, choices=StatementKind.choices)
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT, related_name="statements"
    )
    provider_id = models.BigIntegerField(null=True, blank=True)
    currency = models.CharField(max_length=3)
    period_start = models.DateField()
    status = models.CharField(max_length=12, choices=StatementStatus.choices, default=StatementStatus.DRAFT)
    number = models.CharField(max_length=40, blank=True)
    lines = models.JSONField(default=list)
    total_micros = models.BigIntegerField(default=0)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)
    finalized_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-period_start", "-id"]
        constraints = [
            models.UniqueConstraint(
                fields=["kind", "user", "currency", "period_start"],
                condition=models.Q(user__isnull=False),
                name="statement_user_month_unique",
            ),
            models.UniqueConstraint(
                fields=["kind", "provider_id", "currency", "period_start"],
                condition=models.Q(provider_id__isnull=False),
                name="statement_provider_month_unique",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.kind} {self.period_start:%Y-%m} {self.status}"


# --- Spend controls ------------------------------------------------------------------------------


class SpendControl(models.Model):
    """A buyer's own limits: a monthly spend cap and a low-balance alert threshold (issue 13).

    Written only by ``billing.services.spend``. The row is also the lock that serialises a
    buyer's order placements against the cap (two concurrent orders cannot both slip under it).
    """

    user = models.OneToOneField(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="spend_control"
    )
    # None: no cap. What counts toward it: see ``billing.services.spend.spent_this_month``.
    monthly_cap_micros = models.BigIntegerField(null=True, blank=True)
    # None: no alert. One e-mail when the available balance falls below it, the next only after
    # the balance has risen to it again (``low_balance_alerted_at`` is cleared then).
    low_balance_threshold_micros = models.BigIntegerField(null=True, blank=True)
    low_balance_alerted_at = models.DateTimeField(null=True, blank=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [
            models.CheckConstraint(
                condition=models.Q(monthly_cap_micros__isnull=True) | models.Q(monthly_cap_micros__gte=0),
                name="spend_cap_nonnegative",
            ),
            models.CheckConstraint(
                condition=models.Q(low_balance_threshold_micros__isnull=True)
                | models.Q(low_balance_threshold_micros__gte=0),
                name="low_balance_threshold_nonnegative",
            ),
        ]

    def __str__(self) -> str:
        return f"spend controls of user {self.user_id}"
