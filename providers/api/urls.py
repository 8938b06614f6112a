from django.urls import path

from providers.api.views import AcceleratorListView

urlpatterns = [
    path("accelerators", AcceleratorListView.as_view(), name="accelerator-list"),
]
