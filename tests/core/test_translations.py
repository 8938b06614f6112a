"""Translations: complete, compiled, current; pages render in Simplified Chinese; no CDN."""

from __future__ import annotations

import ast
import gettext
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PO_FILES = sorted(p for p in ROOT.glob("**/locale/*/LC_MESSAGES/django.po") if ".venv" not in p.parts)
PLACEHOLDER = re.compile(r"%\(\w+\)[sd]|\{\w+\}")


def read_po(path: Path) -> list[dict]:
    """Entries of a .po file: msgid, msgid_plural, msgstr list, flags. The header entry is skipped."""
    entries = []
    for block in path.read_text(encoding="utf-8").strip().split("\n\n"):
        entry: dict = {"flags": set(), "msgid": None, "msgid_plural": None, "msgstr": []}
        key = None
        for line in block.splitlines():
            if line.startswith("#,"):
                entry["flags"].update(flag.strip() for flag in line[2:].split(","))
            elif line.startswith("#"):
                continue
            elif line.startswith('"'):
                value = ast.literal_eval(line)
                if key == "msgstr":
                    entry["msgstr"][-1] += value
                else:
                    entry[key] += value
            else:
                key, _, literal = line.partition(" ")
                value = ast.literal_eval(literal)
                if key.startswith("msgstr"):
                    entry["msgstr"].append(value)
                    key = "msgstr"
                else:
                    entry[key] = value
        if entry["msgid"]:
            entries.append(entry)
    return entries


def test_there_is_a_simplified_chinese_catalogue():
    assert ROOT / "locale" / "zh_Hans" / "LC_MESSAGES" / "django.po" in PO_FILES


@pytest.mark.parametrize("po", PO_FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_message_is_translated_and_none_is_fuzzy(po):
    entries = read_po(po)
    assert entries
    untranslated = [e["msgid"] for e in entries if not e["msgstr"] or not all(e["msgstr"])]
    fuzzy = [e["msgid"] for e in entries if "fuzzy" in e["flags"]]
    assert untranslated == [], f"untranslated in {po}: {untranslated}"
    assert fuzzy == [], f"fuzzy in {po}: {fuzzy}"


@pytest.mark.parametrize("po", PO_FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_translations_keep_their_placeholders(po):
    for entry in read_po(po):
        expected = sorted(PLACEHOLDER.findall(entry["msgid"]))
        for msgstr in entry["msgstr"]:
            assert sorted(PLACEHOLDER.findall(msgstr)) == expected, entry["msgid"]


@pytest.mark.parametrize("po", PO_FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_the_committed_mo_matches_the_po(po):
    """`make messages` compiles the .mo; a .po edited without recompiling fails here."""
    mo = po.with_suffix(".mo")
    assert mo.exists(), f"{mo} is missing: run `make messages`"
    with mo.open("rb") as handle:
        catalog = gettext.GNUTranslations(handle)._catalog  # type: ignore[attr-defined]
    for entry in read_po(po):
        if entry["msgid_plural"] is None:
            assert catalog.get(entry["msgid"]) == entry["msgstr"][0], entry["msgid"]
        else:
            for index, msgstr in enumerate(entry["msgstr"]):
                assert catalog.get((entry["msgid"], index)) == msgstr, entry["msgid"]


def test_the_catalogue_has_every_string_in_the_code(tmp_path):
    """Run makemessages on a copy of the tree: it must find no msgid the committed .po lacks."""
    copy = tmp_path / "tree"
    shutil.copytree(
        ROOT,
        copy,
        ignore=shutil.ignore_patterns(".venv", "var", ".git", "node_modules", "__pycache__", ".*_cache"),
    )
    env = dict(os.environ)
    # The settings only need well-formed URLs here; nothing connects.
    env.update(DATABASE_URL="postgres://nobody@127.0.0.1:1/none", REDIS_URL="redis://127.0.0.1:1/0")
    env.update(SUANLI_VAR_DIR=str(tmp_path / "var"))
    subprocess.run(
        [sys.executable, "manage.py", "makemessages", "-l", "zh_Hans", "--verbosity", "0"],
        cwd=copy,
        env=env,
        check=True,
    )
    committed = {e["msgid"] for e in read_po(ROOT / "locale/zh_Hans/LC_MESSAGES/django.po")}
    current = {e["msgid"] for e in read_po(copy / "locale/zh_Hans/LC_MESSAGES/django.po")}
    assert sorted(current - committed) == [], "new strings: run `make messages` and translate them"
    assert sorted(committed - current) == [], "stale strings: run `make messages`"


@pytest.mark.django_db
def test_pages_render_in_chinese_from_the_browser_language(client):
    response = client.get("/accounts/login/", HTTP_ACCEPT_LANGUAGE="zh-CN,zh;q=0.9")
    body = response.content.decode()
    assert '<html lang="zh-Hans"' in body
    assert "算力交易所" in body and "忘记密码？" in body and "电子邮箱" in body


@pytest.mark.django_db
def test_the_language_switcher_sets_the_language_without_javascript(client):
    response = client.post("/i18n/setlang/", {"language": "zh-hans", "next": "/accounts/signup/"})
    assert response.status_code == 302 and response["Location"] == "/accounts/signup/"
    body = client.get("/accounts/signup/").content.decode()
    assert "创建账户" in body and 'aria-pressed="true">简体中文' in body
    client.post("/i18n/setlang/", {"language": "en", "next": "/"})
    assert "Create your account" in client.get("/accounts/signup/").content.decode()


def test_no_asset_comes_from_another_host():
    """The portal must work in an air-gapped data centre: no CDN, no web fonts, no remote scripts."""
    offenders = []
    pattern = re.compile(
        r"""(?:src|href)\s*=\s*["'](?:https?:)?//|@import\s+url\(\s*["']?(?:https?:)?//|url\(\s*["']?(?:https?:)?//"""
    )
    for folder in ("templates", "static"):
        for path in (ROOT / folder).rglob("*"):
            if path.suffix in {".html", ".txt", ".css", ".js"} and pattern.search(
                path.read_text(encoding="utf-8")
            ):
                offenders.append(str(path.relative_to(ROOT)))
    assert offenders == []
