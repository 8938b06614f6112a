from typing import Any

from django.contrib import admin

from billing.models import Account, Hold, Lease, Payout, Statement, TopUp, Transaction, WebhookEvent


@admin.register(Account)
class AccountAdmin(admin.ModelAdmin):
    list_display = ["id", "kind", "currency", "user", "provider_id", "balance_micros"]
    list_filter = ["kind", "currency"]
    readonly_fields = ["balance_micros"]


@admin.register(Transaction)
class TransactionAdmin(admin.ModelAdmin):
    list_display = ["id", "kind", "idempotency_key", "currency", "posted_at"]
    list_filter = ["kind"]
    search_fields = ["idempotency_key"]

    def has_change_permission(self, request: Any, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: Any, obj: Any = None) -> bool:
        return False


for model in (Hold, Lease, Payout, Statement, TopUp, WebhookEvent):
    admin.site.register(model)
