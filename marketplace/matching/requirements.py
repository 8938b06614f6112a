"""Software specs (``cuda>=12.1``, ``cann>=8.0``) and version comparison.

Versions compare numerically, component by component, with missing components read as zero
(``12.1 == 12.1.0``). Vendor suffixes are tolerated and ignored: comparison stops at the first
component that is not a plain number, keeping its leading digits (``8.0.RC1`` compares as ``8.0``,
``12.4a`` as ``12.4``). So ``cann>=8.0`` accepts a node reporting ``8.0.RC1``: Huawei ships the
8.0 line as RC builds, and a buyer asking for 8.0 means that line.
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import lru_cache

_CONSTRAINT = re.compile(r"^\s*([A-Za-z][\w.-]*?)\s*(>=|<=|==|>|<|=)\s*(\d[\w.+-]*)\s*$")
_SEPARATOR = re.compile(r"[.\-_+]")
_LEADING_DIGITS = re.compile(r"\d+")

_OPERATORS: dict[str, Callable[[tuple[int, ...], tuple[int, ...]], bool]] = {
    ">=": operator.ge,
    ">": operator.gt,
    "==": operator.eq,
    "=": operator.eq,
    "<=": operator.le,
    "<": operator.lt,
}


class SoftwareSpecError(ValueError):
    """The spec text is not ``name op version[, ...]``."""


@dataclass(frozen=True, slots=True)
class SoftwareConstraint:
    name: str
    op: str
    version: tuple[int, ...]

    def satisfied_by(self, software: Mapping[str, str]) -> bool:
        installed = _lookup(software, self.name)
        if installed is None:
            return False
        return _OPERATORS[self.op](version_key(installed), self.version)


@lru_cache(maxsize=4096)
def version_key(text: str) -> tuple[int, ...]:
    """``"12.4.1"`` -> ``(12, 4, 1)``; ``"8.0.RC1"`` -> ``(8,)``; trailing zeros dropped so 8.0 == 8."""
    parts: list[int] = []
    for piece in _SEPARATOR.split(text.strip()):
        digits = _LEADING_DIGITS.match(piece)
        if digits is None:
            break
        parts.append(int(digits.group()))
        if digits.end() < len(piece):
            break  # "4a": keep the 4, ignore the suffix and everything after it
    while parts and parts[-1] == 0:
        parts.pop()
    return tuple(parts)


@lru_cache(maxsize=4096)
def parse_software_spec(text: str) -> tuple[SoftwareConstraint, ...]:
    """Parse ``"cuda>=12.1, driver>=550"``; an empty spec means no constraint."""
    constraints: list[SoftwareConstraint] = []
    for chunk in text.split(","):
        if not chunk.strip():
            continue
        found = _CONSTRAINT.match(chunk)
        if found is None:
            raise SoftwareSpecError(f"{chunk.strip()!r} is not 'name op version' (ops: >=, >, ==, <=, <)")
        name, op, version = found.groups()
        constraints.append(SoftwareConstraint(name.lower(), op, version_key(version)))
    if not constraints and text.strip():
        raise SoftwareSpecError(f"{text!r} has no constraint")
    return tuple(constraints)


def software_satisfied(constraints: tuple[SoftwareConstraint, ...], software: Mapping[str, str]) -> bool:
    return all(constraint.satisfied_by(software) for constraint in constraints)


def _lookup(software: Mapping[str, str], name: str) -> str | None:
    # Agents report stack names as they find them ("CUDA", "cuda"); match case-insensitively.
    if name in software:
        return software[name]
    for key, value in software.items():
        if key.lower() == name:
            return value
    return None
