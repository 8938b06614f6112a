"""Core's /api/v1/ routes (API keys), included by ``config.api_urls``."""

from django.urls import path

from core.api_keys import ApiKeyListCreateView, ApiKeyRevokeView
from core.api_profile import ProfileView

urlpatterns = [
    path("api-keys", ApiKeyListCreateView.as_view(), name="api-key-list"),
    path("api-keys/<int:api_key_id>/revoke", ApiKeyRevokeView.as_view(), name="api-key-revoke"),
    path("profile", ProfileView.as_view(), name="profile"),
]
