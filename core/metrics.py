"""Prometheus metrics at ``GET /metrics``, the same figures whichever process answers the scrape.

The exchange runs several web processes (gunicorn workers, replicas) and several Celery workers;
a scrape reaches one web process. An in-process ``prometheus_client`` metric would show only
that process's share, and a worker's figures (a matching round's duration) could not be seen at
all. So every figure is either:

* **counted in Redis** as it happens (request latency, matching round time, settlement runs):
  each histogram is one Redis hash of per-bucket counters incremented with one pipelined round
  trip (``HINCRBY`` / ``HINCRBYFLOAT`` are atomic, so any number of processes add to the same
  counters), and the last round / run is a gauge in another hash. Counters live as long as Redis
  does; Prometheus treats a Redis flush as a counter reset. Recording never raises: a metric is
  not worth a failed request or task;
* or **read at scrape time** from PostgreSQL and Redis (``ExchangeCollector``): order, job and
  node counts by status (three ``GROUP BY`` queries), settlement lag (oldest open lease's
  billed-through mark), heartbeat flush lag (the pending-since key of ``core.redis``) and Celery
  queue depth (``LLEN`` of each queue's lists in the broker, which is ``REDIS_URL``).

core imports no app: the models are looked up by label (``apps.get_model``) when scraped.
"""

from __future__ import annotations

import bisect
import functools
import hmac
import ipaddress
import logging
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, ParamSpec, TypeVar

from django.apps import apps
from django.conf import settings
from django.db.models import Count, Min
from django.db.models.functions import Coalesce
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.utils.translation import gettext as _
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from core.api import error_body
from core.redis import HEARTBEAT_PENDING_SINCE_KEY, redis_client

log = logging.getLogger("suanli.metrics")

P = ParamSpec("P")
R = TypeVar("R")

_PREFIX = "suanli:metrics:"
_SEP = "\x1f"  # between label values in a hash field; never part of a view name or a status
_LAST_KEY = _PREFIX + "last"


# --- Histograms counted in Redis -----------------------------------------------------------------


@dataclass(frozen=True)
class RedisHistogram:
    """A Prometheus histogram whose counters are one Redis hash, shared by every process.

    Field ``<labels>\\x1f<i>`` counts the observations that fell in bucket ``i`` (the first bound
    ``>= value``; ``len(buckets)`` is ``+Inf``), ``<labels>\\x1fsum`` their sum. Buckets are made
    cumulative when scraped.
    """

    name: str
    documentation: str
    labelnames: tuple[str, ...]
    buckets: tuple[float, ...]

    @property
    def key(self) -> str:
        return _PREFIX + self.name

    def observe(self, pipe: Any, value: float, labels: tuple[str, ...]) -> None:
        prefix = "".join(label + _SEP for label in labels)
        pipe.hincrby(self.key, prefix + str(bisect.bisect_left(self.buckets, value)), 1)
        pipe.hincrbyfloat(self.key, prefix + "sum", value)

    def family(self, fields: dict[bytes, bytes]) -> HistogramMetricFamily:
        counts: dict[tuple[str, ...], list[int]] = {}
        sums: dict[tuple[str, ...], float] = {}
        for raw_field, raw_value in fields.items():
            *labels, slot = raw_field.decode().split(_SEP)
            if len(labels) != len(self.labelnames):
                continue  # written under another label set (an older version): not ours
            key = tuple(labels)
            if slot == "sum":
                sums[key] = float(raw_value)
            elif slot.isdigit() and int(slot) <= len(self.buckets):
                counts.setdefault(key, [0] * (len(self.buckets) + 1))[int(slot)] += int(raw_value)
        family = HistogramMetricFamily(self.name, self.documentation, labels=list(self.labelnames))
        for key in sorted(counts):
            running, cumulative = 0, []
            for bound, count in zip([*self.buckets, float("inf")], counts[key], strict=True):
                running += count
                cumulative.append((_bound(bound), float(running)))
            family.add_metric(list(key), cumulative, sums.get(key, 0.0))
        return family


def _bound(value: float) -> str:
    return "+Inf" if value == float("inf") else repr(float(value))


HTTP_REQUEST_SECONDS = RedisHistogram(
    "suanli_http_request_duration_seconds",
    "Time to answer an HTTP request, by resolved view, method and status class.",
    ("view", "method", "status"),
    (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
)
MATCHING_ROUND_SECONDS = RedisHistogram(
    "suanli_matching_round_seconds",
    "Duration of a matching round (firm: on-demand and reserved; spot: every spot pool cleared).",
    ("round",),
    (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0),
)
SETTLEMENT_RUN_SECONDS = RedisHistogram(
    "suanli_settlement_run_seconds",
    "Duration of a settlement run over every open lease.",
    (),
    (0.05, 0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0),
)
HISTOGRAMS = (HTTP_REQUEST_SECONDS, MATCHING_ROUND_SECONDS, SETTLEMENT_RUN_SECONDS)

_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


def _record(write: Callable[[Any], None]) -> None:
    """Run ``write`` on a Redis pipeline; a failure is logged, never raised."""
    try:
        pipe = redis_client().pipeline(transaction=False)
        write(pipe)
        pipe.execute()
    except Exception:
        log.warning("metrics.record_failed", exc_info=True)


def observe_http_request(*, view: str, method: str, status_code: int, seconds: float) -> None:
    # Labels are bounded: views are the URLconf's, methods a fixed set, statuses a class.
    method = method.upper() if method.upper() in _METHODS else "OTHER"
    status = f"{status_code // 100}xx"
    _record(lambda pipe: HTTP_REQUEST_SECONDS.observe(pipe, seconds, (view, method, status)))


def observe_matching_round(*, seconds: float, round_kind: str = "firm") -> None:
    """A matching round took ``seconds`` (called by the matching tasks, in the worker)."""

    def write(pipe: Any) -> None:
        MATCHING_ROUND_SECONDS.observe(pipe, seconds, (round_kind,))
        pipe.hset(
            _LAST_KEY,
            mapping={
                f"matching_seconds{_SEP}{round_kind}": seconds,
                f"matching_at{_SEP}{round_kind}": time.time(),
            },
        )

    _record(write)


def observe_settlement_run(*, seconds: float, succeeded: bool = True) -> None:
    """A settlement run took ``seconds``; a successful one moves the last-settled mark."""

    def write(pipe: Any) -> None:
        SETTLEMENT_RUN_SECONDS.observe(pipe, seconds, ())
        if succeeded:
            pipe.hset(_LAST_KEY, mapping={"settlement_seconds": seconds, "settlement_at": time.time()})

    _record(write)


def timed_matching_round(round_kind: str) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """Decorate a matching task: its wall time is observed as one ``round_kind`` round."""

    def decorate(task: Callable[P, R]) -> Callable[P, R]:
        @functools.wraps(task)
        def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
            started = time.perf_counter()
            try:
                return task(*args, **kwargs)
            finally:
                observe_matching_round(seconds=time.perf_counter() - started, round_kind=round_kind)

        return wrapper

    return decorate


def timed_settlement_run(task: Callable[P, R]) -> Callable[P, R]:
    """Decorate the settlement task: its duration is observed; only success moves the last-run mark."""

    @functools.wraps(task)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        started = time.perf_counter()
        succeeded = False
        try:
            result = task(*args, **kwargs)
            succeeded = True
            return result
        finally:
            observe_settlement_run(seconds=time.perf_counter() - started, succeeded=succeeded)

    return wrapper


def metrics_reset() -> None:
    """Forget every Redis-held figure (tests; an operator starting the counters over)."""
    redis_client().delete(_LAST_KEY, *(histogram.key for histogram in HISTOGRAMS))


# --- Figures read at scrape time -----------------------------------------------------------------

# (metric, help, app label, model): counted by status, with a 0 for every status of the model's
# choices that has no rows, so a series never vanishes from a dashboard.
_COUNTED = (
    ("suanli_orders", "Orders by status.", "marketplace", "Order"),
    ("suanli_jobs", "Jobs by status.", "marketplace", "Job"),
    ("suanli_nodes", "Provider nodes by status.", "providers", "Node"),
)

# Kombu's Redis transport keeps a queue as one list per priority step: the queue's own name for
# priority 0, ``name\x06\x16<n>`` for the others (kombu.transport.redis, PRIORITY_STEPS).
_KOMBU_PRIORITY_SEP = "\x06\x16"
_KOMBU_PRIORITY_STEPS = (3, 6, 9)


class ExchangeCollector(Collector):
    """The figures computed when scraped: a few cheap queries, one Redis pipeline."""

    def collect(self) -> Iterable[Metric]:
        up = GaugeMetricFamily(
            "suanli_metrics_source_up", "Whether a data source answered this scrape (1) or not (0).",
            labels=["source"],
        )  # fmt: skip
        database = list(self._guarded(self._database_families))
        redis_families = list(self._guarded(self._redis_families))
        up.add_metric(["database"], 1.0 if database else 0.0)
        up.add_metric(["redis"], 1.0 if redis_families else 0.0)
        yield up
        yield from database
        yield from redis_families

    @staticmethod
    def _guarded(source: Callable[[], Iterator[Metric]]) -> Iterator[Metric]:
        # A source that fails is reported by suanli_metrics_source_up = 0 instead of a failed scrape:
        # the other source's figures are exactly what an operator needs in an outage.
        try:
            families = list(source())
        except Exception:
            log.warning("metrics.source_failed source=%s", source.__name__, exc_info=True)
            return iter(())
        return iter(families)

    def _database_families(self) -> Iterator[Metric]:
        for name, documentation, app_label, model_name in _COUNTED:
            model = apps.get_model(app_label, model_name)
            family = GaugeMetricFamily(name, documentation, labels=["status"])
            counts = dict(model.objects.order_by().values_list("status").annotate(n=Count("pk")))
            statuses = [value for value, _label in model._meta.get_field("status").choices or []]
            for status in [*statuses, *sorted(set(counts) - set(statuses))]:
                family.add_metric([status], float(counts.get(status, 0)))
            yield family

        lease_model = apps.get_model("billing", "Lease")
        oldest = lease_model.objects.filter(status="open").aggregate(
            mark=Min(Coalesce("billed_through", "started_at"))
        )["mark"]
        lag = max(0.0, time.time() - oldest.timestamp()) if oldest is not None else 0.0
        yield GaugeMetricFamily(
            "suanli_settlement_lag_seconds",
            "Now minus the oldest open lease's billed-through mark (its start if never settled); 0 without open leases.",
            value=lag,
        )

    def _redis_families(self) -> Iterator[Metric]:
        from config.celery_app import QUEUES

        client = redis_client()
        pipe = client.pipeline(transaction=False)
        for histogram in HISTOGRAMS:
            pipe.hgetall(histogram.key)
        pipe.hgetall(_LAST_KEY)
        pipe.get(HEARTBEAT_PENDING_SINCE_KEY)
        for queue in QUEUES:
            pipe.llen(queue)
            for step in _KOMBU_PRIORITY_STEPS:
                pipe.llen(f"{queue}{_KOMBU_PRIORITY_SEP}{step}")
        replies = pipe.execute()

        for histogram, fields in zip(HISTOGRAMS, replies, strict=False):
            yield histogram.family(fields)
        last = {k.decode(): float(v) for k, v in replies[len(HISTOGRAMS)].items()}
        pending_since = replies[len(HISTOGRAMS) + 1]
        lengths = replies[len(HISTOGRAMS) + 2 :]

        seconds = GaugeMetricFamily(
            "suanli_matching_round_last_seconds", "Duration of the last matching round.", labels=["round"]
        )
        finished = GaugeMetricFamily(
            "suanli_matching_round_last_timestamp_seconds",
            "Unix time the last matching round ended.",
            labels=["round"],
        )
        for field, value in sorted(last.items()):
            kind, _sep, round_kind = field.partition(_SEP)
            if kind == "matching_seconds":
                seconds.add_metric([round_kind], value)
            elif kind == "matching_at":
                finished.add_metric([round_kind], value)
        yield seconds
        yield finished
        if "settlement_at" in last:
            yield GaugeMetricFamily(
                "suanli_settlement_last_run_timestamp_seconds",
                "Unix time the last successful settlement run ended.",
                value=last["settlement_at"],
            )
            yield GaugeMetricFamily(
                "suanli_settlement_last_run_seconds",
                "Duration of the last successful settlement run.",
                value=last["settlement_seconds"],
            )
        yield GaugeMetricFamily(
            "suanli_heartbeat_flush_lag_seconds",
            "How long the oldest heartbeat not yet flushed to PostgreSQL has waited; 0 when none waits.",
            value=max(0.0, time.time() - float(pending_since)) if pending_since is not None else 0.0,
        )
        depth = GaugeMetricFamily(
            "suanli_celery_queue_length", "Messages waiting in each Celery queue.", labels=["queue"]
        )
        per_queue = 1 + len(_KOMBU_PRIORITY_STEPS)
        for index, queue in enumerate(QUEUES):
            depth.add_metric([queue], float(sum(lengths[index * per_queue : (index + 1) * per_queue])))
        yield depth


REGISTRY = CollectorRegistry(auto_describe=False)
REGISTRY.register(ExchangeCollector())


# --- The endpoint --------------------------------------------------------------------------------


def _is_loopback(address: str) -> bool:
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


@never_cache
@require_GET
def metrics_view(request: HttpRequest) -> HttpResponse:
    """``GET /metrics``: the Prometheus text format, behind ``SUANLI_METRICS_TOKEN``.

    With a token: ``Authorization: Bearer <token>`` or 401. Without one: 404 in production (the
    endpoint is off until a token is set), loopback clients only in development and test.
    """
    token = settings.SUANLI_METRICS_TOKEN
    if not token:
        if settings.PRODUCTION or not _is_loopback(str(request.META.get("REMOTE_ADDR") or "")):
            raise Http404
    else:
        scheme, _space, presented = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            presented.strip().encode(), str(token).encode()
        ):
            response = JsonResponse(
                error_body("not_authenticated", _("A valid metrics token is required.")), status=401
            )
            response["WWW-Authenticate"] = 'Bearer realm="metrics"'
            return response
    return HttpResponse(generate_latest(REGISTRY), content_type=CONTENT_TYPE_LATEST)
