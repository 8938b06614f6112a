from django.contrib import admin
from django.urls import include, path

from core.views import healthz

urlpatterns = [
    path("healthz", healthz, name="healthz"),
    path("admin/", admin.site.urls),
    path("api/v1/", include("config.api_urls")),
    # Stripe webhook and statement downloads (billing).
    path("billing/", include("billing.urls")),
    path("api/agent/v1/", include("config.agent_urls")),
    # Portal: the language switcher (POST /i18n/setlang/) and core's pages (home, accounts, keys).
    path("i18n/", include("django.conf.urls.i18n")),
    path("", include("core.urls")),
]
