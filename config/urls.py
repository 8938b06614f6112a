from django.contrib import admin
from django.urls import include, path, re_path
from drf_spectacular.views import SpectacularAPIView, SpectacularRedocView, SpectacularSwaggerView

from core.api import api_not_found
from core.metrics import metrics_view
from core.views import healthz

urlpatterns = [
    path("healthz", healthz, name="healthz"),
    # Prometheus, behind SUANLI_METRICS_TOKEN (core.metrics).
    path("metrics", metrics_view, name="metrics"),
    path("admin/", admin.site.urls),
    path("api/v1/", include("config.api_urls")),
    # OpenAPI 3 schema, Swagger UI and Redoc (assets from drf-spectacular-sidecar, no CDN).
    path("api/schema/", SpectacularAPIView.as_view(), name="api-schema"),
    path("api/docs/", SpectacularSwaggerView.as_view(url_name="api-schema"), name="api-docs"),
    path("api/redoc/", SpectacularRedocView.as_view(url_name="api-schema"), name="api-redoc"),
    # Billing: Stripe webhook and statement downloads under /billing/; portal /wallet/, /provider/payouts/.
    path("", include("billing.urls")),
    path("api/agent/v1/", include("config.agent_urls")),
    # Unknown /api/ URLs answer in the API's error shape (JSON), never with the portal's 404 page.
    re_path(r"^api/", api_not_found),
    # Portal: the language switcher (POST /i18n/setlang/) and core's pages (home, accounts, keys).
    path("i18n/", include("django.conf.urls.i18n")),
    path("", include("core.urls")),
    # Portal: the market, orders and jobs, providers' nodes and prices; joining a node.
    path("", include("marketplace.urls")),
    path("", include("providers.urls")),
]
