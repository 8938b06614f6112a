from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest

from providers.models import AcceleratorModel, Device, JoinToken, Node, Provider, ProviderMembership
from providers.services import join_token_create


@admin.register(AcceleratorModel)
class AcceleratorModelAdmin(admin.ModelAdmin):
    list_display = ("model", "vendor", "kind", "memory_gib", "fp16_tflops", "tdp_watts", "software_stack")
    list_filter = ("vendor", "kind", "software_stack")
    search_fields = ("model", "family", "match_names")


class MembershipInline(admin.TabularInline):
    model = ProviderMembership
    extra = 0
    autocomplete_fields = ("user",)


@admin.register(Provider)
class ProviderAdmin(admin.ModelAdmin):
    list_display = ("name", "slug", "stripe_account_id", "payouts_enabled", "created_at")
    search_fields = ("name", "slug")
    inlines = [MembershipInline]
    actions = ["create_join_token"]

    @admin.action(description="Create a join token (shown once)")
    def create_join_token(self, request: HttpRequest, queryset: QuerySet[Provider]) -> None:
        for provider in queryset:
            issued = join_token_create(provider=provider, created_by=request.user)  # type: ignore[arg-type]
            self.message_user(
                request,
                f"{provider.name}: expires {issued.join_token.expires_at:%Y-%m-%d %H:%M} UTC. "
                f"Run on the node: {issued.install_command}",
                messages.SUCCESS,
            )


class DeviceInline(admin.TabularInline):
    model = Device
    extra = 0
    readonly_fields = ("index", "uuid", "bus_id", "accelerator", "memory_mib")


@admin.register(Node)
class NodeAdmin(admin.ModelAdmin):
    list_display = ("name", "provider", "region", "cluster", "status", "last_heartbeat_at", "agent_version")
    list_filter = ("status", "region")
    search_fields = ("name", "provider__name")
    readonly_fields = ("credential_prefix", "credential_hash", "last_heartbeat_at")
    inlines = [DeviceInline]


@admin.register(Device)
class DeviceAdmin(admin.ModelAdmin):
    list_display = ("node", "index", "accelerator", "uuid", "health")
    list_filter = ("health", "accelerator__vendor")
    search_fields = ("uuid", "node__name")


@admin.register(JoinToken)
class JoinTokenAdmin(admin.ModelAdmin):
    list_display = ("prefix", "provider", "created_by", "expires_at", "used_at", "node")
    readonly_fields = ("prefix", "token_hash", "used_at", "node")
