"""The API's one JSON parser: hostile bodies become a 400 in the error shape, never a 500.

DRF's ``JSONParser`` turns malformed JSON into a parse error, but valid JSON can still break the
server further down: nesting thousands deep (``RecursionError`` in the decoder, or later in
serializers and ``json.dumps``), integers beyond PostgreSQL's ``bigint`` (``DataError``), lone
UTF-16 surrogates (``"\\ud800"``: ``UnicodeEncodeError`` in psycopg, Redis or ``str.encode``),
NUL characters (PostgreSQL text cannot hold them) and ``1e999`` (a float infinity). This parser
refuses all of them, once, for every endpoint, naming the offending field by its dotted path
(``job.command.0``, the paths ``core.api`` uses for serializer errors).

A view where NUL is data (raw process output stored as bytes, say) lists those fields' dotted
paths in ``json_nul_allowed``; everywhere else NUL is refused.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import IO, Any

from django.utils.translation import gettext as _
from rest_framework import parsers
from rest_framework.exceptions import ParseError

from core.errors import ValidationFailed

# Far deeper than any request the API accepts (an agent inventory is four levels), far below
# Python's recursion limit, so nothing downstream (serializers, json.dumps) can recurse too far.
MAX_DEPTH = 32
BIGINT_MIN = -(2**63)
BIGINT_MAX = 2**63 - 1
# Enough for a client to fix its body; a body with 10,000 bad strings need not list them all.
MAX_REPORTED_FIELDS = 20


class JsonParser(parsers.JSONParser):
    """``application/json`` bodies, validated for what would otherwise fail deep in the server."""

    def parse(
        self, stream: IO[bytes] | None, media_type: str | None = None, parser_context: Any = None
    ) -> Any:
        if stream is None:
            return None
        raw = stream.read()
        try:
            text = raw.decode("utf-8") if isinstance(raw, bytes) else str(raw)
        except UnicodeDecodeError:
            raise ParseError(_("The body is not UTF-8.")) from None
        try:
            body = json.loads(text, parse_constant=_refuse_constant)
        except RecursionError:
            raise ParseError(_("JSON nested deeper than %(depth)s levels.") % {"depth": MAX_DEPTH}) from None
        except ValueError as exc:
            raise ParseError(_("JSON parse error - %(error)s") % {"error": str(exc)}) from None
        view = (parser_context or {}).get("view")
        body_check(body, nul_allowed=frozenset(getattr(view, "json_nul_allowed", ())))
        return body


def _refuse_constant(name: str) -> Any:
    # NaN and Infinity are not JSON; DRF's strict mode refuses them with a ValueError too.
    raise ValueError(f"{name} is not valid JSON")


def body_check(body: Any, *, nul_allowed: frozenset[str] = frozenset()) -> None:
    """Raise ``ValidationFailed`` naming each field (dotted path) the server could not store.

    Walks iteratively, so the walk itself cannot overflow the stack whatever the depth.
    """
    fields: dict[str, str] = {}
    stack: list[tuple[Any, str, int]] = [(body, "", 0)]
    while stack and len(fields) < MAX_REPORTED_FIELDS:
        value, path, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise ValidationFailed(
                _("JSON nested deeper than %(depth)s levels.") % {"depth": MAX_DEPTH},
                fields={path or "non_field_errors": _("Nested too deeply.")},
            )
        if isinstance(value, str):
            problem = _string_problem(value, refuse_nul=path not in nul_allowed)
            if problem:
                fields[path or "non_field_errors"] = problem
        elif isinstance(value, bool) or value is None:
            continue
        elif isinstance(value, int):
            if not BIGINT_MIN <= value <= BIGINT_MAX:
                fields[path or "non_field_errors"] = _("Must be between %(min)s and %(max)s.") % {
                    "min": BIGINT_MIN,
                    "max": BIGINT_MAX,
                }
        elif isinstance(value, float):
            if not math.isfinite(value):
                fields[path or "non_field_errors"] = _("A finite number is required.")
        elif isinstance(value, Mapping):
            for key, item in value.items():
                child = f"{path}.{key}" if path else str(key)
                problem = _string_problem(key, refuse_nul=True)
                if problem:
                    # The key itself cannot be echoed safely; name the place of the object instead.
                    fields[path or "non_field_errors"] = _("Invalid key: %(problem)s") % {"problem": problem}
                    continue
                stack.append((item, child, depth + 1))
        elif isinstance(value, list):
            for index, item in enumerate(value):
                stack.append((item, f"{path}.{index}" if path else str(index), depth + 1))
    if fields:
        first_path, first_problem = sorted(fields.items())[0]
        raise ValidationFailed(
            first_problem if first_path == "non_field_errors" else f"{first_path}: {first_problem}",
            fields=dict(sorted(fields.items())),
        )


def _string_problem(text: str, *, refuse_nul: bool) -> str | None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return _("Contains a lone UTF-16 surrogate; send valid Unicode text.")
    if refuse_nul and "\x00" in text:
        return _("Must not contain NUL characters.")
    return None
