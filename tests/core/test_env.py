"""DATABASE_URL parsing and its inverse, the URL handed to child processes."""

import pytest
from django.core.exceptions import ImproperlyConfigured

from config.env import database_url_for, parse_database_url


@pytest.mark.parametrize(
    "url",
    [
        "postgres://postgres@127.0.0.1:5432/suanli",
        "postgres://app:p%40ss%3Aw%2Fd@db.example.com/suanli",
        "postgresql://postgres:@/suanli?host=%2Fwork%2Fvar%2Fpg",
    ],
)
def test_database_url_round_trips(url):
    parsed = parse_database_url(url)
    assert parse_database_url(database_url_for(parsed)) == parsed


def test_special_characters_in_the_password_survive():
    parsed = parse_database_url("postgres://app:p%40ss%3Aw%2Fd@db.example.com:6432/suanli")
    assert parsed["PASSWORD"] == "p@ss:w/d"
    assert parse_database_url(database_url_for(parsed))["PASSWORD"] == "p@ss:w/d"
    assert parsed["PORT"] == "6432"


def test_sqlite_is_refused():
    with pytest.raises(ImproperlyConfigured, match="SQLite is not supported"):
        parse_database_url("sqlite:///db.sqlite3")
