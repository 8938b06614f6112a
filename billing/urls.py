"""Non-API billing routes (mounted under /billing/ by config/urls.py)."""

from django.urls import path

from billing import views

urlpatterns = [
    path("stripe/webhook", views.stripe_webhook, name="stripe-webhook"),
    path("statements/<int:pk>.csv", views.statement_csv, name="statement-csv"),
    path("statements/<int:pk>.html", views.statement_html, name="statement-html"),
]
