"""Suanli Exchange settings: one module, every deployment difference from the environment.

``SUANLI_ENV`` is ``development`` (default), ``test`` or ``production``. Production refuses
``DEBUG`` and refuses to start without its secrets. With ``DATABASE_URL`` / ``REDIS_URL`` unset
(development and tests only) an embedded real PostgreSQL and Redis are started under ``var/``.
"""

from __future__ import annotations

from pathlib import Path

from django.core.exceptions import ImproperlyConfigured

from config import embedded
from config.env import (
    celery_broker_url,
    env_bool,
    env_int,
    env_list,
    env_secret,
    env_str,
    parse_database_url,
)
from core.logging import LOG_FORMATS, logging_config, structlog_configure

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = Path(env_str("SUANLI_VAR_DIR") or BASE_DIR / "var")

SUANLI_ENV = env_str("SUANLI_ENV", "development")
if SUANLI_ENV not in {"development", "test", "production"}:
    raise ImproperlyConfigured(f"SUANLI_ENV must be development, test or production, got {SUANLI_ENV!r}")
PRODUCTION = SUANLI_ENV == "production"

DEBUG = env_bool("DJANGO_DEBUG", default=SUANLI_ENV == "development")
if PRODUCTION and DEBUG:
    raise ImproperlyConfigured("DJANGO_DEBUG must be off when SUANLI_ENV=production")

SECRET_KEY = env_secret(
    "DJANGO_SECRET_KEY",
    required=PRODUCTION,
    default="dev-only-insecure-key-never-use-in-production-0123456789abcdef",
)
ALLOWED_HOSTS = env_list("DJANGO_ALLOWED_HOSTS", [] if PRODUCTION else ["*"])
CSRF_TRUSTED_ORIGINS = env_list("DJANGO_CSRF_TRUSTED_ORIGINS", [])
SITE_URL = (env_str("SUANLI_SITE_URL") or "http://127.0.0.1:8000").rstrip("/")

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django.contrib.humanize",
    "rest_framework",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "core",
    "providers",
    "billing",
    "marketplace",
]

MIDDLEWARE = [
    # First: every log line of the request carries its id (X-Request-ID in, and echoed out).
    "core.middleware.RequestIdMiddleware",
    # Then every later layer (rate limits, log-in limits, logs) sees the real client address.
    "core.middleware.TrustedProxyMiddleware",
    # Latency by view for /metrics, timed around everything below, with the final status code.
    "core.middleware.RequestMetricsMiddleware",
    # Outside the rest, so an error any of them answers under /api/ is still the API's JSON shape.
    "core.middleware.ApiErrorShapeMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.locale.LocaleMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    # ETag + 304 on GET /api/v1/... (polling without re-downloading).
    "core.middleware.ApiConditionalGetMiddleware",
]

ROOT_URLCONF = "config.urls"
WSGI_APPLICATION = "config.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.template.context_processors.i18n",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "core.context_processors.portal",
            ],
        },
    },
]

# --- Data stores -------------------------------------------------------------------------------

_database_url = env_str("DATABASE_URL")
if not _database_url:
    if PRODUCTION:
        raise ImproperlyConfigured("DATABASE_URL must be set in production")
    _database_url = embedded.postgres_url(VAR_DIR)
DATABASES = {"default": parse_database_url(_database_url)}
DATABASES["default"]["CONN_MAX_AGE"] = env_int("DATABASE_CONN_MAX_AGE", 60, minimum=0)
DATABASES["default"]["CONN_HEALTH_CHECKS"] = True
DATABASES["default"]["TEST"] = {"NAME": env_str("DATABASE_TEST_NAME") or "test_suanli"}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

REDIS_URL = env_str("REDIS_URL")
if not REDIS_URL:
    if PRODUCTION:
        raise ImproperlyConfigured("REDIS_URL must be set in production")
    REDIS_URL = embedded.redis_url(VAR_DIR)

CACHES = {
    "default": {
        "BACKEND": "django.core.cache.backends.redis.RedisCache",
        "LOCATION": REDIS_URL,
        "KEY_PREFIX": "suanli",
    }
}
SESSION_ENGINE = "django.contrib.sessions.backends.cached_db"

# --- Celery (the app itself is config/celery_app.py) -------------------------------------------

CELERY_BROKER_URL = celery_broker_url(REDIS_URL)
CELERY_TASK_ALWAYS_EAGER = env_bool("CELERY_TASK_ALWAYS_EAGER", default=False)

# --- Auth, i18n, static --------------------------------------------------------------------------

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
LOGIN_URL = "/accounts/login/"
LOGIN_REDIRECT_URL = "/"

LANGUAGE_CODE = "en"
LANGUAGES = [("en", "English"), ("zh-hans", "简体中文")]
LOCALE_PATHS = [BASE_DIR / "locale"]
# Number formats that differ from Django's own (zh_Hans groups money by three with commas).
FORMAT_MODULE_PATH = ["core.formats"]
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "/static/"
STATIC_ROOT = VAR_DIR / "staticfiles"
STATICFILES_DIRS = [BASE_DIR / "static"]
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {
        "BACKEND": (
            "whitenoise.storage.CompressedManifestStaticFilesStorage"
            if PRODUCTION
            else "django.contrib.staticfiles.storage.StaticFilesStorage"
        )
    },
}

# Outside production, serve straight from the source folders (no collectstatic needed).
WHITENOISE_AUTOREFRESH = not PRODUCTION
WHITENOISE_USE_FINDERS = not PRODUCTION

EMAIL_BACKEND = env_str("EMAIL_BACKEND") or (
    "django.core.mail.backends.smtp.EmailBackend"
    if PRODUCTION
    else "django.core.mail.backends.console.EmailBackend"
)
EMAIL_HOST = env_str("EMAIL_HOST", "localhost")
EMAIL_PORT = env_int("EMAIL_PORT", 25)
DEFAULT_FROM_EMAIL = env_str("DEFAULT_FROM_EMAIL", "Suanli Exchange <no-reply@suanli.exchange>")

# --- HTTP security (production defaults; each can be overridden) -------------------------------

SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
SECURE_SSL_REDIRECT = env_bool("DJANGO_SECURE_SSL_REDIRECT", default=PRODUCTION)
SECURE_HSTS_SECONDS = env_int("DJANGO_SECURE_HSTS_SECONDS", 31_536_000 if PRODUCTION else 0)
SECURE_HSTS_INCLUDE_SUBDOMAINS = PRODUCTION
SECURE_HSTS_PRELOAD = PRODUCTION
SESSION_COOKIE_SECURE = PRODUCTION
CSRF_COOKIE_SECURE = PRODUCTION
SESSION_COOKIE_HTTPONLY = True
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
X_FRAME_OPTIONS = "DENY"
# /healthz is probed by load balancers and container healthchecks over plain HTTP.
# So is /metrics, scraped by Prometheus inside the deployment's network.
SECURE_REDIRECT_EXEMPT = [r"^healthz$", r"^metrics$"]

# --- REST API ----------------------------------------------------------------------------------

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "core.auth.ApiKeyAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    # Refuses what would fail deeper down (nesting, bigint overflow, lone surrogates, NUL) with a 400.
    "DEFAULT_PARSER_CLASSES": ["core.parsers.JsonParser"],
    "DEFAULT_SCHEMA_CLASS": "core.schema.ApiAutoSchema",
    "EXCEPTION_HANDLER": "core.api.exception_handler",
    "DEFAULT_PAGINATION_CLASS": "core.api.CursorPagination",
    "PAGE_SIZE": 50,
    "DATETIME_FORMAT": "%Y-%m-%dT%H:%M:%S.%fZ",
    # Counted in Redis (core.throttling): per API key (or session user), per client IP when
    # anonymous; agents are not throttled here. 429 carries Retry-After.
    "DEFAULT_THROTTLE_CLASSES": ["core.throttling.ApiKeyRateThrottle", "core.throttling.AnonRateThrottle"],
    "DEFAULT_THROTTLE_RATES": {
        "api": env_str("SUANLI_API_RATE") or "1200/min",
        "anon": env_str("SUANLI_API_ANON_RATE") or "120/min",
        # Per client IP, in the Redis cache. Agent registration: bounds join-token guessing.
        "agent_register": env_str("SUANLI_AGENT_REGISTER_RATE") or "20/min",
        # Per client IP: failed API-key or node-credential authentications, then 429 for every
        # credential from that address until the window ends (bounds credential guessing).
        "auth_failure": env_str("SUANLI_AUTH_FAILURE_RATE") or "30/min",
    },
    # DRF's own throttles (agent registration) key on REMOTE_ADDR, never on X-Forwarded-For,
    # which any client can set; core.middleware.TrustedProxyMiddleware sets REMOTE_ADDR.
    "NUM_PROXIES": 0,
}
# Reverse proxies whose X-Forwarded-For is believed (comma-separated IPs or CIDRs; none by
# default, so the client address is the TCP peer). The client is the nearest untrusted hop.
SUANLI_TRUSTED_PROXIES = env_list("SUANLI_TRUSTED_PROXIES", [])
SPECTACULAR_SETTINGS = {
    "TITLE": "Suanli Exchange API",
    "DESCRIPTION": "Rent GPUs, NPUs, MLUs, DCUs, Gaudi, FPGAs and CPUs by the device-hour.",
    "VERSION": "1",
    "SERVE_INCLUDE_SCHEMA": False,
    # Swagger UI and Redoc from the drf-spectacular-sidecar wheel: no CDN.
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "COMPONENT_SPLIT_REQUEST": True,
    "ENUM_NAME_OVERRIDES": {
        "DeviceKindEnum": "providers.models.DeviceKind",
        "TermEnum": "marketplace.models.Term",
        "OrderStatusEnum": "marketplace.models.OrderStatus",
        "NodeStatusEnum": "providers.models.NodeStatus",
    },
}

# --- Money and the exchange --------------------------------------------------------------------

SUANLI_CURRENCY = (env_str("SUANLI_CURRENCY") or "USD").upper()
if len(SUANLI_CURRENCY) != 3 or not SUANLI_CURRENCY.isalpha():
    raise ImproperlyConfigured(f"SUANLI_CURRENCY must be an ISO 4217 code, got {SUANLI_CURRENCY!r}")
SUANLI_PLATFORM_FEE_BPS = env_int("SUANLI_PLATFORM_FEE_BPS", 1000, minimum=0)
if SUANLI_PLATFORM_FEE_BPS > 10_000:
    raise ImproperlyConfigured("SUANLI_PLATFORM_FEE_BPS must be between 0 and 10000")

# --- Marketplace -------------------------------------------------------------------------------

# Grid carbon intensity, kg CO2e per kWh, by region (for the estimated kgCO2e per device-hour of
# every offer: TDP x declared PUE x intensity). Sources: China's national grid emission factor
# for 2022 (0.5703, MEE 2024) split by regional grids; US EPA eGRID 2022; EEA 2023; the world
# average from Ember 2024 for regions not listed. Override with SUANLI_GRID_INTENSITY as JSON.
SUANLI_GRID_INTENSITY: dict[str, float] = {
    "cn-north": 0.8843,
    "cn-east": 0.7035,
    "cn-south": 0.5271,
    "cn-central": 0.5257,
    "cn-west": 0.5200,
    "cn-northwest": 0.6671,
    "cn-northeast": 0.7769,
    "us-west": 0.2270,
    "us-east": 0.3690,
    "eu-central": 0.3810,
    "eu-north": 0.0450,
    "ap-southeast": 0.4080,
    "default": 0.4800,
}
_grid_override = env_str("SUANLI_GRID_INTENSITY")
if _grid_override:
    import json as _json

    try:
        SUANLI_GRID_INTENSITY.update({str(k): float(v) for k, v in _json.loads(_grid_override).items()})
    except (ValueError, AttributeError) as exc:
        raise ImproperlyConfigured(f"SUANLI_GRID_INTENSITY must be a JSON object of numbers: {exc}") from exc

# How often the matcher places on-demand and reserved orders, and how often every spot pool clears
# (seconds; the beat schedule reads both). Short values are for tests and demos.
SUANLI_MATCHING_INTERVAL_S = env_int("SUANLI_MATCHING_INTERVAL_S", 5, minimum=1)
SUANLI_SPOT_INTERVAL_S = env_int("SUANLI_SPOT_INTERVAL_S", 30, minimum=1)
# Firm orders (on-demand, reserved) are matched highest limit first, then oldest first; for that
# ranking a waiting order's limit grows by this many basis points of itself per hour waited, with
# no cap, so an old order at a low limit is placed eventually (500: +5 % an hour). 0: pure price.
SUANLI_FIRM_AGE_BOOST_BPS_PER_HOUR = env_int("SUANLI_FIRM_AGE_BOOST_BPS_PER_HOUR", 500, minimum=0)
# How often the stored free-device counts behind the offer list are brought up to date (seconds).
# Reads stay exact in between; nodes changed since the last refresh are only slower to list.
SUANLI_OFFER_FREE_REFRESH_S = env_int("SUANLI_OFFER_FREE_REFRESH_S", 5, minimum=1)
# Notice a preempted spot job gets between SIGTERM and SIGKILL (DESIGN: 120 s).
SUANLI_PREEMPTION_NOTICE_S = env_int("SUANLI_PREEMPTION_NOTICE_S", 120, minimum=1)
# How far an agent's clock may disagree with ours: a job event dated further in the future (or
# before the job was assigned) is refused; usage windows may overhang the job's running interval
# by this much, no more (billing trusts only times within it).
SUANLI_AGENT_MAX_CLOCK_SKEW_S = env_int("SUANLI_AGENT_MAX_CLOCK_SKEW_S", 300, minimum=0)
# Shortest reserved window a buyer may book (billing needs at least 60 s).
SUANLI_MIN_RESERVATION_S = env_int("SUANLI_MIN_RESERVATION_S", 600, minimum=60)
# How far ahead a reserved window may start (days): capacity is not sold years out, and a bound
# keeps typo'd years (9999) out of the slot index.
SUANLI_MAX_RESERVATION_AHEAD_DAYS = env_int("SUANLI_MAX_RESERVATION_AHEAD_DAYS", 365, minimum=1)
# A volume whose buyer cannot pay for its storage is kept this long (the low-balance e-mail and the
# volume's page say so), then deleted: like a job's funds stop, it bounds the bad debt.
SUANLI_VOLUME_UNPAID_GRACE_H = env_int("SUANLI_VOLUME_UNPAID_GRACE_H", 72, minimum=1)
if SUANLI_MAX_RESERVATION_AHEAD_DAYS > 3650:
    raise ImproperlyConfigured("SUANLI_MAX_RESERVATION_AHEAD_DAYS must be at most 3650 (ten years)")
# Outgoing webhooks (marketplace.services.webhooks): attempts per event (then ``failed``), the
# first retry delay (doubling each time: 10, 20, 40, 80, 160 s by default), the request timeout,
# and whether URLs may point at loopback/private addresses (the SSRF guard; always enforced in
# production, off by default in development and test, where receivers listen on localhost).
SUANLI_WEBHOOK_MAX_ATTEMPTS = env_int("SUANLI_WEBHOOK_MAX_ATTEMPTS", 6, minimum=1)
SUANLI_WEBHOOK_RETRY_BASE_S = env_int("SUANLI_WEBHOOK_RETRY_BASE_S", 10, minimum=1)
SUANLI_WEBHOOK_TIMEOUT_S = env_int("SUANLI_WEBHOOK_TIMEOUT_S", 5, minimum=1)
SUANLI_WEBHOOK_ALLOW_PRIVATE = not PRODUCTION and env_bool("SUANLI_WEBHOOK_ALLOW_PRIVATE", default=True)

# --- Stripe ------------------------------------------------------------------------------------

STRIPE_SECRET_KEY = env_secret("STRIPE_SECRET_KEY", required=PRODUCTION, default="sk_test_local")
STRIPE_WEBHOOK_SECRET = env_secret(
    "STRIPE_WEBHOOK_SECRET", required=PRODUCTION, default="whsec_local_development_secret"
)
# Points the stripe library at another API host (the local fake Stripe server in tests/dev).
STRIPE_API_BASE = env_str("STRIPE_API_BASE")

# --- Billing -----------------------------------------------------------------------------------

# How far below zero a buyer wallet may go by default (micro-units; 0 = prepaid only).
BILLING_CREDIT_LINE_MICROS = env_int("BILLING_CREDIT_LINE_MICROS", 0, minimum=0)
# Provider payable at or above this is paid out by the daily payout task (default 20.00).
BILLING_PAYOUT_THRESHOLD_MICROS = env_int("BILLING_PAYOUT_THRESHOLD_MICROS", 20_000_000, minimum=1)
# Share of a reserved booking kept when it is cancelled before its start (basis points).
BILLING_RESERVATION_CANCEL_FEE_BPS = env_int("BILLING_RESERVATION_CANCEL_FEE_BPS", 1000, minimum=0)
if BILLING_RESERVATION_CANCEL_FEE_BPS > 10_000:
    raise ImproperlyConfigured("BILLING_RESERVATION_CANCEL_FEE_BPS must be between 0 and 10000")
# Seconds between settlement runs (the beat schedule and the auto-stop horizon both use it).
BILLING_SETTLEMENT_INTERVAL_S = env_int("BILLING_SETTLEMENT_INTERVAL_S", 60, minimum=1)
# Smallest top-up accepted through the API (micro-units; default 5.00).
BILLING_MIN_TOP_UP_MICROS = env_int("BILLING_MIN_TOP_UP_MICROS", 5_000_000, minimum=1)

# --- Logging -----------------------------------------------------------------------------------

LOG_LEVEL = (env_str("SUANLI_LOG_LEVEL") or "INFO").upper()
# One format for web, worker and beat (core.logging): ``json`` is one JSON object per line (ts,
# level, logger, event, request_id, key-values) for log pipelines; ``console`` is for a human.
SUANLI_LOG_FORMAT = (env_str("SUANLI_LOG_FORMAT") or ("json" if PRODUCTION else "console")).lower()
if SUANLI_LOG_FORMAT not in LOG_FORMATS:
    raise ImproperlyConfigured(f"SUANLI_LOG_FORMAT must be json or console, got {SUANLI_LOG_FORMAT!r}")
# structlog hands every event to stdlib logging, so billing's structlog lines and every
# logging.getLogger() line go through this one LOGGING and its one formatter.
structlog_configure()
LOGGING = logging_config(log_format=SUANLI_LOG_FORMAT, level=LOG_LEVEL)

# --- Metrics -----------------------------------------------------------------------------------

# GET /metrics (Prometheus) wants ``Authorization: Bearer <token>`` when set. Unset: /metrics
# answers 404 in production (disabled) and only loopback clients in development and test.
SUANLI_METRICS_TOKEN = env_secret("SUANLI_METRICS_TOKEN", required=False)
