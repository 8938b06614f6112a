"""The portal in a real browser: the account and API-key journey in both languages, a phone
layout, the log-in rate limit, and offline charts. Screenshots land in var/screenshots/."""

from __future__ import annotations

import re

import pytest
from django.contrib.auth.models import User
from playwright.sync_api import expect

from core.models import ApiKey
from core.ratelimit import LOGIN_MAX_FAILURES_PER_USER

pytestmark = [pytest.mark.browser, pytest.mark.integration, pytest.mark.usefixtures("transactional_db")]

PASSWORD = "violet-lantern-harbour-58"

TEXT = {
    "en": {
        "switch": "English",
        "sign_up": "Sign up",
        "log_in": "Log in",
        "log_out": "Log out",
        "email": "Email",
        "password": "Password",
        "confirm": "Confirm password",
        "welcome": "Welcome, ",
        "logged_out": "You have logged out.",
        "keys": "API keys",
        "name": "Name",
        "create": "Create key",
        "secret": "Secret key",
        "shown_once": "It is shown only once",
        "copy": "Copy",
        "copied": "Copied to the clipboard.",
        "done": "Done: back to API keys",
        "revoke": "Revoke",
        "revoke_confirm": "Revoke key",
        "revoked": "Revoked",
        "pitch": "Rent the accelerator your job needs",
    },
    "zh-hans": {
        "switch": "简体中文",
        "sign_up": "注册",
        "log_in": "登录",
        "log_out": "退出登录",
        "email": "电子邮箱",
        "password": "密码",
        "confirm": "确认密码",
        "welcome": "欢迎，",
        "logged_out": "您已退出登录。",
        "keys": "API 密钥",
        "name": "名称",
        "create": "创建密钥",
        "secret": "密钥",
        "shown_once": "只显示这一次",
        "copy": "复制",
        "copied": "已复制到剪贴板。",
        "done": "完成，返回 API 密钥",
        "revoke": "吊销",
        "revoke_confirm": "吊销密钥",
        "revoked": "已吊销",
        "pitch": "按设备小时租用",
    },
}


def no_horizontal_scroll(page) -> bool:
    return page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")


@pytest.mark.parametrize("language", ["en", "zh-hans"])
def test_account_and_api_key_journey(page, browser_context, portal_server, screenshot, language):
    t = TEXT[language]
    email = f"journey-{language}@example.com"
    requested = []
    page.on("request", lambda request: requested.append(request.url))
    browser_context.grant_permissions(["clipboard-read", "clipboard-write"], origin=portal_server.url)

    # Given a visitor on the landing page, in the chosen language (switched without JavaScript
    # being needed: the switcher is a plain form).
    page.goto("/")
    if language != "en":
        page.get_by_role("button", name=t["switch"]).click()
    expect(page.locator("html")).to_have_attribute("lang", "zh-Hans" if language == "zh-hans" else "en")
    expect(page.get_by_role("heading", level=1)).to_contain_text(t["pitch"])
    screenshot(page, f"{language}-01-landing")

    # When they sign up, they are logged in and welcomed.
    page.get_by_role("link", name=t["sign_up"], exact=True).first.click()
    page.get_by_label(t["email"]).fill(email)
    page.get_by_label(t["password"], exact=True).fill(PASSWORD)
    page.get_by_label(t["confirm"]).fill(PASSWORD)
    screenshot(page, f"{language}-02-signup")
    page.get_by_role("button", name=t["sign_up"], exact=True).click()
    expect(page.get_by_role("heading", level=1)).to_have_text(f"{t['welcome']}{email}")

    # They log out and back in.
    page.get_by_role("button", name=t["log_out"]).click()
    expect(page.get_by_text(t["logged_out"])).to_be_visible()
    page.get_by_role("link", name=t["log_in"], exact=True).first.click()
    page.get_by_label(t["email"]).fill(email)
    page.get_by_label(t["password"], exact=True).fill(PASSWORD)
    screenshot(page, f"{language}-03-login")
    page.get_by_role("button", name=t["log_in"], exact=True).click()
    expect(page.get_by_role("heading", level=1)).to_have_text(f"{t['welcome']}{email}")
    screenshot(page, f"{language}-04-dashboard")

    # They create an API key: its secret is shown once, with a working copy button.
    page.get_by_role("navigation").get_by_role("link", name=t["keys"]).click()
    expect(page.get_by_role("link", name=t["keys"])).to_have_attribute("aria-current", "page")
    page.get_by_label(t["name"], exact=True).fill("training cluster")
    page.locator('input[name="scopes"][value="trade"]').check()
    screenshot(page, f"{language}-05-keys-empty")
    page.get_by_role("button", name=t["create"]).click()
    expect(page.get_by_role("alert")).to_contain_text(t["shown_once"])
    secret = page.get_by_label(t["secret"]).input_value()
    api_key = ApiKey.objects.get(user__username=email)
    assert secret.startswith(f"sk_{api_key.prefix}_")
    assert api_key.scopes == ["read", "trade"]
    page.get_by_role("button", name=t["copy"]).click()
    expect(page.locator("#copy-status")).to_have_text(t["copied"])
    assert page.evaluate("navigator.clipboard.readText()") == secret
    screenshot(page, f"{language}-06-key-created")

    # Back on the list, only the prefix remains.
    page.get_by_role("link", name=t["done"]).click()
    expect(page.get_by_text(f"sk_{api_key.prefix}_…")).to_be_visible()
    assert secret not in page.content()
    screenshot(page, f"{language}-07-keys-list")

    # They revoke it, after a confirmation.
    page.get_by_role("link", name=t["revoke"]).click()
    screenshot(page, f"{language}-08-revoke-confirm")
    page.get_by_role("button", name=t["revoke_confirm"]).click()
    expect(page.get_by_role("cell", name=t["revoked"])).to_be_visible()
    api_key.refresh_from_db()
    assert not api_key.is_active
    screenshot(page, f"{language}-09-key-revoked")

    # And log out.
    page.get_by_role("button", name=t["log_out"]).click()
    expect(page.get_by_role("link", name=t["log_in"], exact=True).first).to_be_visible()

    # Every asset came from the exchange itself: no CDN, nothing off-site.
    offsite = [url for url in requested if not url.startswith(portal_server.url)]
    assert offsite == []


@pytest.fixture
def ann():
    return User.objects.create_user(username="ann@example.com", email="ann@example.com", password=PASSWORD)


def log_in(page, email, password):
    page.goto("/accounts/login/")
    page.get_by_label("Email").fill(email)
    page.get_by_label("Password", exact=True).fill(password)
    page.get_by_role("button", name="Log in", exact=True).click()


@pytest.mark.parametrize(
    "browser_context_args",
    [{"viewport": {"width": 390, "height": 844}, "is_mobile": True, "has_touch": True, "locale": "en-US"}],
)
def test_phone_layout_has_no_horizontal_scroll(page, screenshot, ann):
    page.goto("/")
    assert no_horizontal_scroll(page)
    screenshot(page, "phone-01-landing")
    log_in(page, ann.username, PASSWORD)
    expect(page.get_by_role("heading", level=1)).to_contain_text("Welcome")

    # The navigation folds behind the menu toggle on a phone and opens on a tap.
    nav = page.get_by_role("navigation", name="Main")
    expect(nav).to_be_hidden()
    screenshot(page, "phone-02-dashboard")
    page.get_by_text("Menu", exact=True).click()
    expect(nav.get_by_role("link", name="API keys")).to_be_visible()
    assert no_horizontal_scroll(page)
    screenshot(page, "phone-03-menu-open")

    ApiKey.objects.bulk_create(
        ApiKey(user=ann, name=f"key {i}", prefix=f"phone{i}", key_hash="0" * 64, scopes=["read", "trade"])
        for i in range(3)
    )
    nav.get_by_role("link", name="API keys").click()
    expect(page.get_by_text("sk_phone0_…")).to_be_visible()
    assert no_horizontal_scroll(page)
    screenshot(page, "phone-04-keys")


def test_login_rate_limit_shows_its_error(page, screenshot, ann):
    for _ in range(LOGIN_MAX_FAILURES_PER_USER):
        log_in(page, ann.username, "wrong-password")
        expect(page.get_by_role("alert")).to_contain_text("Please enter a correct")
    # Even the right password is refused now, with a clear message rather than an error page.
    log_in(page, ann.username, PASSWORD)
    expect(page.get_by_role("alert")).to_contain_text(
        re.compile(r"Too many failed log-in attempts\. Try again in 1[45] minutes\.")
    )
    assert page.url.endswith("/accounts/login/")
    screenshot(page, "login-rate-limited")


def test_charts_render_offline(page, screenshot):
    from core.charts import bar_chart, line_chart

    points = [(f"11-{day:02d}", hours) for day, hours in enumerate([3, 8, 5, 13, 21, 17, 24], start=1)]
    requested = []
    page.on("request", lambda request: requested.append(request.url))
    page.goto("/static/css/portal.css")  # same origin as the portal, so the stylesheet applies
    page.set_content(
        '<html><head><link rel="stylesheet" href="/static/css/portal.css"></head><body><main class="container">'
        f'<figure class="chart-figure card">{line_chart(points, title="Device-hours per day")}</figure>'
        f'<figure class="chart-figure card mt-5">{bar_chart(points, title="Jobs per day")}</figure>'
        "</main></body></html>"
    )
    expect(page.locator("svg[role=img]")).to_have_count(2)
    box = page.locator("svg.chart-line polyline").bounding_box()
    assert box is not None and box["width"] > 100
    screenshot(page, "charts")
    assert [url for url in requested if not url.startswith(page.url.split("/static/")[0])] == []
