"""Portal accounts: sign-up, rate-limited log-in, log-out, password reset."""

import re

import pytest
from django.contrib.auth.models import User
from django.core import mail

from core.ratelimit import LOGIN_MAX_FAILURES_PER_IP, LOGIN_MAX_FAILURES_PER_USER, login_failure_record

pytestmark = pytest.mark.django_db

PASSWORD = "correct-horse-battery-42"


@pytest.fixture
def ann():
    return User.objects.create_user(username="ann@example.com", email="ann@example.com", password=PASSWORD)


def test_landing_page_for_anonymous_visitors(client):
    response = client.get("/")
    assert response.status_code == 200
    body = response.content.decode()
    assert 'href="/accounts/signup/"' in body and 'href="/accounts/login/"' in body
    assert "device-hour" in body


def test_signup_creates_the_user_and_logs_it_in(client):
    response = client.post(
        "/accounts/signup/",
        {"email": "  New.Buyer@Example.com ", "password1": PASSWORD, "password2": PASSWORD},
    )
    assert response.status_code == 302 and response["Location"] == "/"
    user = User.objects.get()
    assert user.username == user.email == "new.buyer@example.com"
    assert user.check_password(PASSWORD)
    home = client.get("/")
    assert "Welcome, new.buyer@example.com" in home.content.decode()


def test_signup_refuses_a_taken_address_in_any_case(client, ann):
    response = client.post(
        "/accounts/signup/", {"email": "ANN@example.com", "password1": PASSWORD, "password2": PASSWORD}
    )
    assert response.status_code == 200
    assert "An account with this email already exists." in response.content.decode()
    assert User.objects.count() == 1


@pytest.mark.parametrize(
    ("password1", "password2", "message"),
    [
        ("short", "short", "This password is too short"),
        ("password123", "password123", "This password is too common"),
        ("12345678901234", "12345678901234", "This password is entirely numeric"),
        (PASSWORD, PASSWORD + "x", "The two passwords differ."),
    ],
)
def test_signup_applies_the_password_validators(client, password1, password2, message):
    response = client.post(
        "/accounts/signup/", {"email": "b@example.com", "password1": password1, "password2": password2}
    )
    assert response.status_code == 200
    assert message in response.content.decode()
    assert not User.objects.exists()


def test_signup_page_redirects_a_signed_in_user(client, ann):
    client.force_login(ann)
    assert client.get("/accounts/signup/")["Location"] == "/"


def test_login_with_email_any_case_then_logout_is_post_only(client, ann):
    response = client.post("/accounts/login/", {"username": "Ann@Example.com", "password": PASSWORD})
    assert response.status_code == 302 and response["Location"] == "/"
    assert client.get("/keys/").status_code == 200
    assert client.get("/accounts/logout/").status_code == 405
    response = client.post("/accounts/logout/", follow=True)
    assert "You have logged out." in response.content.decode()
    assert client.get("/keys/").status_code == 302


def test_login_follows_a_safe_next_and_ignores_an_offsite_one(client, ann):
    response = client.post(
        "/accounts/login/", {"username": ann.username, "password": PASSWORD, "next": "/keys/"}
    )
    assert response["Location"] == "/keys/"
    client.logout()
    response = client.post(
        "/accounts/login/", {"username": ann.username, "password": PASSWORD, "next": "https://evil.example/"}
    )
    assert response["Location"] == "/"


def test_wrong_password_is_a_form_error(client, ann):
    response = client.post("/accounts/login/", {"username": ann.username, "password": "nope"})
    assert response.status_code == 200
    assert "Please enter a correct" in response.content.decode()


def test_login_is_blocked_after_too_many_failures_even_with_the_right_password(client, ann):
    for _ in range(LOGIN_MAX_FAILURES_PER_USER):
        assert (
            client.post("/accounts/login/", {"username": ann.username, "password": "nope"}).status_code == 200
        )
    response = client.post("/accounts/login/", {"username": ann.username, "password": PASSWORD})
    assert response.status_code == 429
    assert "Too many failed log-in attempts. Try again in 15 minutes." in response.content.decode()
    assert "_auth_user_id" not in client.session
    # Another address from the same IP is not blocked by Ann's counter.
    User.objects.create_user(username="bob@example.com", email="bob@example.com", password=PASSWORD)
    assert (
        client.post("/accounts/login/", {"username": "bob@example.com", "password": PASSWORD}).status_code
        == 302
    )


def test_a_successful_login_clears_the_users_failures(client, ann):
    for _ in range(LOGIN_MAX_FAILURES_PER_USER - 1):
        client.post("/accounts/login/", {"username": ann.username, "password": "nope"})
    assert (
        client.post("/accounts/login/", {"username": ann.username, "password": PASSWORD}).status_code == 302
    )
    client.logout()
    for _ in range(LOGIN_MAX_FAILURES_PER_USER - 1):
        client.post("/accounts/login/", {"username": ann.username, "password": "nope"})
    assert (
        client.post("/accounts/login/", {"username": ann.username, "password": PASSWORD}).status_code == 302
    )


def test_one_ip_is_blocked_after_failures_across_many_usernames(client, ann):
    # Each failed HTTP attempt costs a password hash; count all but the last one directly.
    for i in range(LOGIN_MAX_FAILURES_PER_IP - 1):
        login_failure_record(ip="127.0.0.1", username=f"guess{i}@example.com")
    client.post("/accounts/login/", {"username": "last-guess@example.com", "password": "nope"})
    response = client.post("/accounts/login/", {"username": ann.username, "password": PASSWORD})
    assert response.status_code == 429
    # A different client address is unaffected.
    response = client.post(
        "/accounts/login/", {"username": ann.username, "password": PASSWORD}, REMOTE_ADDR="10.0.0.9"
    )
    assert response.status_code == 302


def test_login_fails_open_when_redis_is_down(client, ann, settings):
    from core import redis as core_redis

    core_redis._pool.cache_clear()
    settings.REDIS_URL = "redis://127.0.0.1:1/0"
    try:
        response = client.post("/accounts/login/", {"username": ann.username, "password": PASSWORD})
    finally:
        core_redis._pool.cache_clear()
    assert response.status_code == 302


def test_password_reset_sends_a_working_link(client, ann):
    response = client.post("/accounts/password-reset/", {"email": "ann@example.com"})
    assert response["Location"] == "/accounts/password-reset/sent/"
    assert len(mail.outbox) == 1
    message = mail.outbox[0]
    assert message.to == ["ann@example.com"]
    assert message.subject == "Reset your Suanli Exchange password"
    link = re.search(r"http://testserver(/accounts/reset/\S+/)", message.body).group(1)
    form_page = client.get(link, follow=True)
    assert "Choose a new password" in form_page.content.decode()
    new_password = "a-brand-new-passphrase-7"
    response = client.post(
        form_page.redirect_chain[-1][0], {"new_password1": new_password, "new_password2": new_password}
    )
    assert response["Location"] == "/accounts/reset/done/"
    ann.refresh_from_db()
    assert ann.check_password(new_password)


def test_password_reset_for_an_unknown_address_looks_the_same_and_sends_nothing(client):
    response = client.post("/accounts/password-reset/", {"email": "nobody@example.com"})
    assert response["Location"] == "/accounts/password-reset/sent/"
    assert mail.outbox == []


def test_csrf_is_enforced_on_portal_forms(ann):
    from django.test import Client

    strict = Client(enforce_csrf_checks=True)
    response = strict.post("/accounts/login/", {"username": ann.username, "password": PASSWORD})
    assert response.status_code == 403
    strict.force_login(ann)
    assert strict.post("/keys/", {"name": "x", "scopes": ["read"]}).status_code == 403
