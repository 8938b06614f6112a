"""The one domain exception hierarchy, mapped to the API error shape by ``core.api``.

Services raise these; views never build error responses by hand. Each carries a stable machine
``code``, a human ``message`` and optional per-field messages.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence


class SuanliError(Exception):
    code = "error"
    status_code = 400

    def __init__(
        self,
        message: str,
        *,
        fields: Mapping[str, Sequence[str] | str] | None = None,
        code: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.fields: dict[str, list[str]] = {
            key: [value] if isinstance(value, str) else list(value) for key, value in (fields or {}).items()
        }
        if code:
            self.code = code


class ValidationFailed(SuanliError):
    code = "invalid"
    status_code = 400


class NotFound(SuanliError):
    code = "not_found"
    status_code = 404


class Forbidden(SuanliError):
    code = "forbidden"
    status_code = 403


class Conflict(SuanliError):
    code = "conflict"
    status_code = 409


class InvalidTransition(Conflict):
    code = "invalid_transition"


class InsufficientFunds(SuanliError):
    code = "insufficient_funds"
    status_code = 402


class CapacityUnavailable(Conflict):
    code = "capacity_unavailable"


class PaymentProviderError(SuanliError):
    code = "payment_provider_error"
    status_code = 502
