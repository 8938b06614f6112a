"""Portal routes of the marketplace (buyers: market, orders, jobs; sellers: nodes, pricing)."""

from django.urls import path

from marketplace import views, views_account, views_volumes

app_name = "marketplace"

urlpatterns = [
    path("market/", views.market, name="market"),
    path("market/offers/<int:offer_id>/", views.offer_detail, name="offer_detail"),
    path("market/offers/<int:offer_id>/order/", views.order_new, name="order_new"),
    path("orders/", views.orders, name="orders"),
    path("orders/<int:order_id>/", views.order_detail, name="order_detail"),
    path("orders/<int:order_id>/cancel/", views.order_cancel_view, name="order_cancel"),
    path("jobs/<int:job_id>/", views.job_detail, name="job_detail"),
    path("account/spend/", views_account.spend_settings, name="spend_settings"),
    path("account/webhooks/", views_account.webhook_add, name="webhook_add"),
    path("account/webhooks/<int:webhook_id>/delete/", views_account.webhook_delete, name="webhook_delete"),
    path("jobs/<int:job_id>/stop/", views.job_stop_view, name="job_stop"),
    path("volumes/", views_volumes.volumes, name="volumes"),
    path("volumes/<int:volume_id>/delete/", views_volumes.volume_delete_view, name="volume_delete"),
    path("provider/nodes/", views.nodes, name="nodes"),
    path("provider/nodes/<int:node_id>/", views.node_detail, name="node_detail"),
    path("provider/pricing/", views.pricing, name="pricing"),
    path("provider/pricing/<int:node_id>/", views.pricing_update, name="pricing_update"),
]
