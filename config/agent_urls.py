"""Every /api/agent/v1/ route (node credentials), gathered from the apps' api/agent_urls.py."""

from django.urls import include, path

urlpatterns = [
    path("", include("providers.api.agent_urls")),
    path("", include("marketplace.api.agent_urls")),
]
