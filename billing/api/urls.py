from django.urls import path

from billing.api import views

urlpatterns = [
    path("wallet", views.WalletView.as_view(), name="wallet"),
    path("wallet/top-ups", views.TopUpCreateView.as_view(), name="wallet-top-ups"),
    path("usage", views.UsageListView.as_view(), name="usage"),
    path("invoices", views.InvoiceListView.as_view(), name="invoice-list"),
    path("invoices/<int:pk>", views.InvoiceDetailView.as_view(), name="invoice-detail"),
    path("provider/earnings", views.EarningsView.as_view(), name="provider-earnings"),
    path("provider/payouts", views.PayoutListView.as_view(), name="provider-payouts"),
    path("provider/payout-account", views.PayoutAccountView.as_view(), name="provider-payout-account"),
]
