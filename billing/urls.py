"""Billing's non-API routes: the Stripe webhook and statement downloads (under /billing/), and the
portal's wallet (/wallet/, Stripe Checkout's return address) and earnings (/provider/payouts/,
Stripe Connect's return address)."""

from django.urls import path

from billing import views

app_name = "billing"

urlpatterns = [
    path("billing/stripe/webhook", views.stripe_webhook, name="stripe-webhook"),
    path("billing/statements/<int:pk>.csv", views.statement_csv, name="statement-csv"),
    path("billing/statements/<int:pk>.html", views.statement_html, name="statement-html"),
    path("wallet/", views.wallet, name="wallet"),
    path("wallet/top-up/", views.topup, name="topup"),
    path("provider/payouts/", views.earnings, name="earnings"),
    path("provider/payouts/onboard/", views.payout_onboard, name="payout_onboard"),
]
