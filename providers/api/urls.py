from django.urls import path

from providers.api.views import AcceleratorListView, JoinTokenCreateView, NodeListView

urlpatterns = [
    path("accelerators", AcceleratorListView.as_view(), name="accelerator-list"),
    path("provider/join-tokens", JoinTokenCreateView.as_view(), name="provider-join-token-create"),
    path("provider/nodes", NodeListView.as_view(), name="provider-node-list"),
]
