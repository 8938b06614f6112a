"""One log format for web, worker and beat: structlog in front of stdlib ``logging``.

``structlog_configure()`` runs once, from ``config.settings``, in every process that loads the
settings (gunicorn, ``manage.py``, the Celery worker and beat). structlog then hands its events to
stdlib ``logging``, so a ``structlog.get_logger()`` line and a ``logging.getLogger()`` line both go
through ``settings.LOGGING`` and come out of the same handler and formatter:

* ``json`` (production default): one JSON object per line, ``ts`` (ISO 8601 UTC), ``level``,
  ``logger``, ``event``, ``request_id`` (``null`` outside a request), then the event's key-values
  (``task_id`` / ``task`` in a Celery task, ``exception`` with the traceback on errors);
* ``console`` (development and test default): the same fields, aligned for a human.

Nothing here imports Django: the settings module imports it before Django is set up. The
request id is bound with ``structlog.contextvars`` by ``core.middleware.RequestIdMiddleware``.
"""

from __future__ import annotations

import logging
from typing import Any

import structlog
from structlog.typing import EventDict, Processor

LOG_FORMATS = ("json", "console")

# Keys every JSON line starts with, in this order (log pipelines and humans both read them first).
_LEADING_KEYS = ("ts", "level", "logger", "event", "request_id")
# What Django's own loggers pass in ``extra`` that is an object, not a figure worth logging.
_DROPPED_EXTRAS = ("request", "server_time")


def _drop_noisy_extras(_logger: Any, _method: str, event_dict: EventDict) -> EventDict:
    for key in _DROPPED_EXTRAS:
        event_dict.pop(key, None)
    return event_dict


def _leading_keys_first(_logger: Any, _method: str, event_dict: EventDict) -> EventDict:
    """``ts, level, logger, event, request_id`` first and always present, then the rest."""
    ordered: EventDict = {key: event_dict.pop(key, None) for key in _LEADING_KEYS}
    ordered.update(event_dict)
    return ordered


# Applied to every line: structlog's own (in ``structlog.configure``) and stdlib's (as the
# formatter's ``foreign_pre_chain``), so both carry the same fields.
SHARED_PROCESSORS: list[Processor] = [
    structlog.contextvars.merge_contextvars,
    structlog.stdlib.add_log_level,
    structlog.stdlib.add_logger_name,
    structlog.processors.TimeStamper(fmt="iso", utc=True, key="ts"),
]


def formatter_config(log_format: str) -> dict[str, Any]:
    """The ``LOGGING["formatters"]`` entry for ``json`` or ``console`` (``dictConfig`` syntax)."""
    if log_format not in LOG_FORMATS:
        raise ValueError(f"log format must be one of {', '.join(LOG_FORMATS)}, got {log_format!r}")
    renderer: list[Processor]
    if log_format == "json":
        renderer = [
            structlog.processors.format_exc_info,
            _leading_keys_first,
            structlog.processors.JSONRenderer(ensure_ascii=False),
        ]
    else:
        renderer = [structlog.dev.ConsoleRenderer(colors=False, timestamp_key="ts")]
    return {
        "()": structlog.stdlib.ProcessorFormatter,
        "foreign_pre_chain": [
            *SHARED_PROCESSORS,
            structlog.stdlib.ExtraAdder(),
            _drop_noisy_extras,
        ],
        "processors": [structlog.stdlib.ProcessorFormatter.remove_processors_meta, *renderer],
    }


def build_formatter(log_format: str) -> logging.Formatter:
    """The formatter ``LOGGING`` installs, as an object (the agent and the tests attach it)."""
    config = dict(formatter_config(log_format))
    factory = config.pop("()")
    formatter: logging.Formatter = factory(**config)
    return formatter


def logging_config(*, log_format: str, level: str) -> dict[str, Any]:
    """``settings.LOGGING``: one stderr handler on the root logger, in ``log_format``."""
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"structured": formatter_config(log_format)},
        "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "structured"}},
        "root": {"handlers": ["console"], "level": level},
        # SQL is logged at DEBUG; never let SUANLI_LOG_LEVEL=DEBUG flood the log with it.
        "loggers": {"django.db.backends": {"level": "INFO"}},
    }


def structlog_configure() -> None:
    """Route structlog through stdlib ``logging`` (and so through ``settings.LOGGING``).

    Idempotent: the settings module may be imported more than once (autoreload, tests).
    """
    structlog.configure(
        processors=[
            structlog.stdlib.filter_by_level,
            *SHARED_PROCESSORS,
            structlog.stdlib.PositionalArgumentsFormatter(),
            structlog.processors.StackInfoRenderer(),
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
