from django.urls import path

from marketplace.api.account import (
    SpendControlsView,
    WebhookDeliveryListView,
    WebhookDetailView,
    WebhookListCreateView,
)
from marketplace.api.trading import (
    JobStopView,
    OfferListView,
    OrderCancelView,
    OrderDetailView,
    OrderListCreateView,
    ProviderNodeView,
    SpotPriceListView,
)
from marketplace.api.views import JobDetailView, JobLogsView
from marketplace.api.volumes import VolumeDetailView, VolumeListCreateView

urlpatterns = [
    path("jobs/<int:job_id>", JobDetailView.as_view(), name="job-detail"),
    path("jobs/<int:job_id>/logs", JobLogsView.as_view(), name="job-logs"),
    path("jobs/<int:job_id>/stop", JobStopView.as_view(), name="job-stop"),
    path("offers", OfferListView.as_view(), name="offer-list"),
    path("orders", OrderListCreateView.as_view(), name="order-list"),
    path("orders/<int:order_id>", OrderDetailView.as_view(), name="order-detail"),
    path("orders/<int:order_id>/cancel", OrderCancelView.as_view(), name="order-cancel"),
    path("spot-prices", SpotPriceListView.as_view(), name="spot-price-list"),
    path("spend-controls", SpendControlsView.as_view(), name="spend-controls"),
    path("webhooks", WebhookListCreateView.as_view(), name="webhook-list"),
    path("webhooks/<int:webhook_id>", WebhookDetailView.as_view(), name="webhook-detail"),
    path(
        "webhooks/<int:webhook_id>/deliveries", WebhookDeliveryListView.as_view(), name="webhook-deliveries"
    ),
    path("volumes", VolumeListCreateView.as_view(), name="volume-list"),
    path("volumes/<int:volume_id>", VolumeDetailView.as_view(), name="volume-detail"),
    # The node as its provider sees it, with its offer; PATCH sets prices (marketplace owns offers).
    path("provider/nodes/<int:node_id>", ProviderNodeView.as_view(), name="provider-node-detail"),
]
