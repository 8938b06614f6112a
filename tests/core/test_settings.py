"""Production settings refuse unsafe configurations; `check --deploy` is clean with real values.

Each case runs Django in a fresh interpreter, since settings are read once per process.
"""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

PRODUCTION_ENV = {
    "SUANLI_ENV": "production",
    "DJANGO_SECRET_KEY": "x7#m2!pQ9vL$wR4tY8uI0oP3aS6dF1gH5jK7lZ2xC4vB6nM8qW0eR3tY5uI7oP9a",
    "DJANGO_ALLOWED_HOSTS": "exchange.example.com",
    "STRIPE_SECRET_KEY": "sk_live_example",
    "STRIPE_WEBHOOK_SECRET": "whsec_example",
}


def run_django(args: list[str], env_overrides: dict[str, str | None]) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "STRIPE_", "SUANLI_ENV"))}
    env["DATABASE_URL"] = os.environ.get("DATABASE_URL") or "postgres://u:p@127.0.0.1:1/x"
    env["REDIS_URL"] = os.environ.get("REDIS_URL") or "redis://127.0.0.1:1/0"
    for key, value in env_overrides.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    return subprocess.run(
        [sys.executable, "manage.py", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )


def test_production_refuses_debug():
    result = run_django(["check"], {**PRODUCTION_ENV, "DJANGO_DEBUG": "true"})
    assert result.returncode != 0
    assert "DJANGO_DEBUG must be off when SUANLI_ENV=production" in result.stderr


def test_production_refuses_a_missing_secret_key():
    result = run_django(["check"], {**PRODUCTION_ENV, "DJANGO_SECRET_KEY": None})
    assert result.returncode != 0
    assert "DJANGO_SECRET_KEY (or DJANGO_SECRET_KEY_FILE) must be set in production" in result.stderr


def test_production_refuses_missing_stripe_secrets():
    result = run_django(["check"], {**PRODUCTION_ENV, "STRIPE_WEBHOOK_SECRET": None})
    assert result.returncode != 0
    assert "STRIPE_WEBHOOK_SECRET" in result.stderr


def test_secret_can_come_from_a_file(tmp_path):
    secret_file = tmp_path / "secret"
    secret_file.write_text(PRODUCTION_ENV["DJANGO_SECRET_KEY"] + "\n")
    env = {**PRODUCTION_ENV, "DJANGO_SECRET_KEY": None, "DJANGO_SECRET_KEY_FILE": str(secret_file)}
    result = run_django(["check", "--deploy", "--fail-level", "WARNING"], env)
    assert result.returncode == 0, result.stderr


def test_check_deploy_reports_no_issues_with_production_values():
    result = run_django(["check", "--deploy", "--fail-level", "WARNING"], PRODUCTION_ENV)
    assert result.returncode == 0, result.stderr
    assert "System check identified no issues" in result.stdout


def test_sqlite_is_refused():
    result = run_django(["check"], {"DATABASE_URL": "sqlite:///db.sqlite3"})
    assert result.returncode != 0
    assert "SQLite is not supported" in result.stderr
