"""Portal routes of providers: start selling, join a node, a node's settings."""

from django.urls import path

from providers import views

app_name = "providers"

urlpatterns = [
    path("provider/start/", views.provider_start, name="start"),
    path("provider/nodes/join/", views.join, name="join"),
    path("provider/nodes/<int:node_id>/settings/", views.node_settings, name="node_settings"),
]
