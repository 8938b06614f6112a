"""Portal routes owned by core: home, accounts (sign-up, log-in, log-out, password reset), API keys.

The route names are Django's usual ones (``login``, ``logout``, ``password_reset`` ...) so that
Django's own views and templates find them.
"""

from django.contrib.auth import views as auth_views
from django.urls import path

from core import views
from core.forms import PortalPasswordResetForm, PortalSetPasswordForm

urlpatterns = [
    path("", views.home, name="home"),
    path("accounts/signup/", views.signup, name="signup"),
    path("accounts/login/", views.PortalLoginView.as_view(), name="login"),
    path("accounts/logout/", views.PortalLogoutView.as_view(), name="logout"),
    path(
        "accounts/password-reset/",
        auth_views.PasswordResetView.as_view(form_class=PortalPasswordResetForm),
        name="password_reset",
    ),
    path(
        "accounts/password-reset/sent/",
        auth_views.PasswordResetDoneView.as_view(),
        name="password_reset_done",
    ),
    path(
        "accounts/reset/<uidb64>/<token>/",
        auth_views.PasswordResetConfirmView.as_view(form_class=PortalSetPasswordForm),
        name="password_reset_confirm",
    ),
    path(
        "accounts/reset/done/",
        auth_views.PasswordResetCompleteView.as_view(),
        name="password_reset_complete",
    ),
    path("keys/", views.apikey_list, name="apikey_list"),
    path("keys/<int:api_key_id>/revoke/", views.apikey_revoke_view, name="apikey_revoke"),
    path("profile/ssh-key/", views.ssh_key, name="ssh_key"),
]
