"""Portal routes of providers: start selling, join a node."""

from django.urls import path

from providers import views

app_name = "providers"

urlpatterns = [
    path("provider/start/", views.provider_start, name="start"),
    path("provider/nodes/join/", views.join, name="join"),
]
