"""Every /api/v1/ route, gathered from the apps' api/urls.py modules."""

from django.urls import include, path

urlpatterns = [
    path("", include("core.api_urls")),
    path("", include("providers.api.urls")),
    path("", include("billing.api.urls")),
    path("", include("marketplace.api.urls")),
]
