"""Portal forms: sign-up, rate-limited log-in, API keys."""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib.auth import authenticate, password_validation
from django.contrib.auth.forms import AuthenticationForm, PasswordResetForm, SetPasswordForm
from django.contrib.auth.models import User
from django.db import IntegrityError, transaction
from django.db.models import Q
from django.http import HttpRequest
from django.utils.translation import gettext_lazy as _
from django.utils.translation import ngettext

from core.models import ApiKeyScope
from core.ratelimit import login_block_get, login_failure_record, login_success_record


def client_ip(request: HttpRequest | None) -> str:
    if request is None:
        return "unknown"
    return str(request.META.get("REMOTE_ADDR") or "unknown")


class NoLabelSuffix:
    """Labels without Django's trailing colon (the layout puts each label on its own line)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("label_suffix", "")
        super().__init__(*args, **kwargs)


class PortalPasswordResetForm(NoLabelSuffix, PasswordResetForm):
    pass


class PortalSetPasswordForm(NoLabelSuffix, SetPasswordForm):
    pass


class SignUpForm(NoLabelSuffix, forms.Form):
    """An account is an email address: the username *is* the email, stored lower-cased."""

    email = forms.EmailField(
        label=_("Email"),
        max_length=150,
        widget=forms.EmailInput(attrs={"autocomplete": "email", "autofocus": True}),
    )
    password1 = forms.CharField(
        label=_("Password"),
        strip=False,
        widget=forms.PasswordInput(attrs={"autocomplete": "new-password"}),
        help_text=password_validation.password_validators_help_text_html(),
    )
    password2 = forms.CharField(
        label=_("Confirm password"),
        strip=False,
        widget=forms.PasswordInput(attrs={"autocomplete": "new-password"}),
    )

    def clean_email(self) -> str:
        email = self.cleaned_data["email"].strip().lower()
        if User.objects.filter(Q(username__iexact=email) | Q(email__iexact=email)).exists():
            raise forms.ValidationError(_("An account with this email already exists."), code="duplicate")
        return email

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean() or {}
        password1 = cleaned.get("password1")
        password2 = cleaned.get("password2")
        if password1 and password2 and password1 != password2:
            self.add_error(
                "password2", forms.ValidationError(_("The two passwords differ."), code="mismatch")
            )
        elif password1:
            email = cleaned.get("email", "")
            try:
                password_validation.validate_password(password1, User(username=email, email=email))
            except forms.ValidationError as error:
                self.add_error("password1", error)
        return cleaned

    def save(self) -> User | None:
        """Create the user; None when the address was taken meanwhile (the form then says so)."""
        email = self.cleaned_data["email"]
        try:
            with transaction.atomic():
                return User.objects.create_user(
                    username=email, email=email, password=self.cleaned_data["password1"]
                )
        except IntegrityError:
            # Two sign-ups for one address raced past clean_email; the unique username decides.
            self.add_error("email", _("An account with this email already exists."))
            return None


class LoginForm(NoLabelSuffix, AuthenticationForm):
    """Django's log-in form behind the Redis rate limit of ``core.ratelimit``.

    A blocked attempt is refused before the password is checked; ``rate_limited`` tells the view
    to answer 429 instead of 200.
    """

    rate_limited = False

    def __init__(self, request: HttpRequest | None = None, *args: Any, **kwargs: Any) -> None:
        super().__init__(request, *args, **kwargs)
        self.fields["username"].label = _("Email")
        self.fields["username"].widget.attrs.update({"autocomplete": "username", "inputmode": "email"})

    def clean(self) -> dict[str, Any]:
        username = (self.cleaned_data.get("username") or "").strip()
        password = self.cleaned_data.get("password")
        if not (username and password):
            return self.cleaned_data
        ip = client_ip(self.request)
        block = login_block_get(ip=ip, username=username)
        if block is not None:
            self.rate_limited = True
            minutes = max(1, -(-block.retry_after_s // 60))
            raise forms.ValidationError(
                ngettext(
                    "Too many failed log-in attempts. Try again in %(minutes)d minute.",
                    "Too many failed log-in attempts. Try again in %(minutes)d minutes.",
                    minutes,
                )
                % {"minutes": minutes},
                code="rate_limited",
            )
        user = authenticate(self.request, username=username, password=password)
        if user is None and username != username.lower():
            # Sign-up stores addresses lower-cased; accept "Ann@Example.com" for "ann@example.com".
            user = authenticate(self.request, username=username.lower(), password=password)
        if user is None:
            login_failure_record(ip=ip, username=username)
            raise self.get_invalid_login_error()
        self.confirm_login_allowed(user)
        self.user_cache = user
        login_success_record(ip=ip, username=username)
        return self.cleaned_data


SCOPE_LABELS = {
    ApiKeyScope.READ: _("Read: the catalog, offers, your orders, jobs, wallet and usage"),
    ApiKeyScope.TRADE: _("Trade: place and cancel orders, stop jobs, top up the wallet"),
    ApiKeyScope.PROVIDER: _("Provider: manage nodes, join tokens, prices and payouts"),
}


class ApiKeyCreateForm(NoLabelSuffix, forms.Form):
    name = forms.CharField(
        label=_("Name"),
        max_length=100,
        help_text=_("Something that tells you where the key is used, such as “training cluster” or “CI”."),
        widget=forms.TextInput(attrs={"autocomplete": "off"}),
    )
    scopes = forms.MultipleChoiceField(
        label=_("Scopes"),
        choices=[(scope.value, SCOPE_LABELS[scope]) for scope in ApiKeyScope],
        widget=forms.CheckboxSelectMultiple,
        initial=[ApiKeyScope.READ.value],
        error_messages={"required": _("Choose at least one scope.")},
    )

    def clean_name(self) -> str:
        name = self.cleaned_data["name"].strip()
        if not name:
            raise forms.ValidationError(_("A key needs a name."), code="required")
        return name


class SshKeyForm(NoLabelSuffix, forms.Form):
    ssh_public_key = forms.CharField(
        label=_("SSH public key"),
        required=False,
        max_length=4160,  # the key's own bound (core.ssh_keys) gives the precise error
        help_text=_(
            "One line from ~/.ssh/id_ed25519.pub (ed25519, ECDSA or RSA). Jobs ordered with SSH "
            "mode are launched with it. Leave empty to remove it."
        ),
        widget=forms.Textarea(attrs={"rows": 3, "autocomplete": "off", "spellcheck": "false"}),
    )
