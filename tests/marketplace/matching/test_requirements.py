from __future__ import annotations

import pytest

from marketplace.matching import SoftwareSpecError, parse_software_spec, version_key
from marketplace.matching.requirements import software_satisfied


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("12.4", (12, 4)),
        ("12.4.1", (12, 4, 1)),
        ("12.1.0", (12, 1)),
        ("8.0.RC1", (8,)),
        ("8.0.RC2", (8,)),
        ("12.4a", (12, 4)),
        ("550.54.15", (550, 54, 15)),
        ("6.1-beta", (6, 1)),
        ("", ()),
    ],
)
def test_version_key_is_numeric_and_tolerates_suffixes(text: str, key: tuple[int, ...]) -> None:
    assert version_key(text) == key


def test_versions_compare_numerically_not_as_text() -> None:
    assert version_key("12.10") > version_key("12.9")
    assert version_key("8.0.RC1") == version_key("8.0")


@pytest.mark.parametrize(
    ("spec", "software", "ok"),
    [
        ("cuda>=12.1", {"cuda": "12.4"}, True),
        ("cuda>=12.1", {"cuda": "12.0"}, False),
        ("cuda>=12.1", {"CUDA": "12.1"}, True),
        ("cuda>12.1", {"cuda": "12.1.0"}, False),
        ("cuda==12.1", {"cuda": "12.1.0"}, True),
        ("cuda<12", {"cuda": "11.8"}, True),
        ("cuda<=11.8", {"cuda": "11.8"}, True),
        ("cann>=8.0", {"cann": "8.0.RC1"}, True),
        ("cann>=8.0", {"cann": "7.0"}, False),
        ("cann>=8.0", {"cuda": "12.4"}, False),
        ("cuda>=12.1, driver>=550", {"cuda": "12.4", "driver": "550.54.15"}, True),
        ("cuda>=12.1, driver>=550", {"cuda": "12.4", "driver": "535.104"}, False),
        ("", {}, True),
    ],
)
def test_software_spec(spec: str, software: dict[str, str], ok: bool) -> None:
    assert software_satisfied(parse_software_spec(spec), software) is ok


@pytest.mark.parametrize("spec", ["cuda", "cuda>>12", ">=12.1", "cuda>=abc", ","])
def test_bad_specs_are_rejected(spec: str) -> None:
    with pytest.raises(SoftwareSpecError):
        parse_software_spec(spec)
