"""Provider write services: join tokens, node registration, heartbeats and liveness.

Secrets (join tokens, node credentials) follow the API-key scheme of ``core.services``:
``<kind>_<prefix>_<secret>``; the prefix finds the row, the SHA-256 of the whole string (high
entropy, so no slow hash is needed) authenticates it, and the string itself is shown once.
"""

from __future__ import annotations

import json
import logging
import secrets
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from django.conf import settings
from django.contrib.auth.models import User
from django.db import IntegrityError, connection, transaction
from django.utils import timezone
from django.utils.translation import gettext as _

from core.errors import Conflict, SuanliError, ValidationFailed
from core.redis import redis_client
from core.services import hash_secret
from providers.models import (
    AcceleratorModel,
    Device,
    DeviceHealth,
    JoinToken,
    Node,
    NodeStatus,
    Provider,
)
from providers.verification import node_verification

log = logging.getLogger(__name__)

JOIN_TOKEN_TTL = timedelta(hours=24)
HEARTBEAT_INTERVAL_S = 10
SUSPECT_AFTER = timedelta(seconds=45)
OFFLINE_AFTER = timedelta(seconds=150)
MAX_DEVICES_PER_NODE = 64
AGENT_VENDORS = ("nvidia", "amd", "huawei", "cambricon", "hygon", "intel", "xilinx", "cpu")
# A CPU-only node rents its host as one device of this catalog row, whatever the CPU is called.
CPU_CATALOG_MODEL = "x86-64 CPU"

# Heartbeats: one hash per node plus a set of nodes with unflushed heartbeats.
HEARTBEAT_KEY = "suanli:hb:node:{node_id}"
HEARTBEAT_DIRTY_KEY = "suanli:hb:dirty"
# A node silent this long has long been marked offline from PostgreSQL; its hash can go.
HEARTBEAT_KEY_TTL_S = 7 * 24 * 3600


class TokenInvalid(SuanliError):
    code = "invalid_token"
    status_code = 400


class TokenGone(SuanliError):
    """The token existed but can no longer be used (already used, or expired)."""

    code = "token_gone"
    status_code = 410


# --- Join tokens -------------------------------------------------------------------------------


def install_command(*, token: str) -> str:
    """The one line a provider pastes on a node (the portal, the API and the admin show it)."""
    return (
        f"pip install suanli-exchange && suanli-agent join --server {settings.SITE_URL} "
        f"--token {token} && suanli-agent run"
    )


@dataclass(frozen=True)
class IssuedJoinToken:
    join_token: JoinToken
    token: str  # shown once, never stored
    install_command: str


def join_token_create(
    *, provider: Provider, created_by: User | None, region: str = "", cluster: str = ""
) -> IssuedJoinToken:
    """Issue a one-time join token for ``provider``, valid for 24 hours.

    The caller has checked that ``created_by`` may act for the provider. Only the token's hash is
    stored; the returned secret and install command are not recoverable afterwards.
    """
    region, cluster = region.strip(), cluster.strip()
    fields: dict[str, str] = {}
    if len(region) > JoinToken._meta.get_field("region").max_length:  # type: ignore[operator]
        fields["region"] = _("At most %(count)s characters.") % {"count": 32}
    if len(cluster) > JoinToken._meta.get_field("cluster").max_length:  # type: ignore[operator]
        fields["cluster"] = _("At most %(count)s characters.") % {"count": 64}
    if fields:
        raise ValidationFailed(_("Invalid join token settings."), fields=fields)
    prefix = secrets.token_hex(6)
    token = f"jt_{prefix}_{secrets.token_urlsafe(32)}"
    join_token = JoinToken.objects.create(
        provider=provider,
        created_by=created_by,
        prefix=prefix,
        token_hash=hash_secret(token),
        region=region,
        cluster=cluster,
        expires_at=timezone.now() + JOIN_TOKEN_TTL,
    )
    log.info("join_token.created provider_id=%s join_token_id=%s", provider.pk, join_token.pk)
    return IssuedJoinToken(join_token=join_token, token=token, install_command=install_command(token=token))


def provider_create(*, owner: User, name: str) -> Provider:
    """Create a provider organisation with ``owner`` as its owner (the portal's "sell compute").

    The slug is derived from the name and made unique with a numeric suffix.
    """
    from django.utils.text import slugify

    from providers.models import ProviderMembership

    name = name.strip()
    if not name or len(name) > Provider._meta.get_field("name").max_length:  # type: ignore[operator]
        raise ValidationFailed(
            _("A provider needs a name of at most 128 characters."),
            fields={"name": _("A provider needs a name of at most 128 characters.")},
        )
    base = (slugify(name) or "provider")[:56]
    with transaction.atomic():
        slug, n = base, 1
        while Provider.objects.filter(slug=slug).exists():
            n += 1
            slug = f"{base}-{n}"
        provider = Provider.objects.create(name=name, slug=slug)
        ProviderMembership.objects.create(provider=provider, user=owner, role=ProviderMembership.Role.OWNER)
    log.info("provider.created provider_id=%s owner_id=%s", provider.pk, owner.pk)
    return provider


# --- Registration ------------------------------------------------------------------------------


@dataclass(frozen=True)
class HostIn:
    cpu_model: str
    cpu_cores: int
    memory_mib: int
    disk_gib: int
    nics: list[dict[str, Any]]


@dataclass(frozen=True)
class DeviceIn:
    vendor: str
    model: str
    index: int
    uuid: str
    bus_id: str
    memory_mib: int


@dataclass(frozen=True)
class InventoryIn:
    host: HostIn
    devices: list[DeviceIn]
    software: dict[str, str]


@dataclass(frozen=True)
class RegisteredNode:
    node: Node
    credential: str  # shown once, never stored
    heartbeat_interval: int


def accelerators_for(devices: Sequence[DeviceIn]) -> dict[int, AcceleratorModel]:
    """Map each device (by index) to its catalog row: exact match name, then case-insensitive.

    Raises ``ValidationFailed`` naming every model the catalog does not know.
    """
    catalog = list(AcceleratorModel.objects.all())
    exact: dict[str, AcceleratorModel] = {}
    folded: dict[str, AcceleratorModel] = {}
    cpu_row: AcceleratorModel | None = None
    for entry in catalog:
        if entry.model == CPU_CATALOG_MODEL:
            cpu_row = entry
        for name in entry.match_names:
            exact.setdefault(name, entry)
            folded.setdefault(name.casefold(), entry)
    found: dict[int, AcceleratorModel] = {}
    errors: dict[str, str] = {}
    for position, device in enumerate(devices):
        row: AcceleratorModel | None
        if device.vendor == "cpu":
            row = cpu_row
        else:
            row = exact.get(device.model) or folded.get(device.model.strip().casefold())
        if row is None:
            errors[f"inventory.devices.{position}.model"] = _(
                "Unknown device model %(model)s: it is not in the hardware catalog."
            ) % {"model": repr(device.model)}
        else:
            found[device.index] = row
    if errors:
        first = next(iter(errors.values()))
        raise ValidationFailed(first, fields=errors, code="unknown_device_model")
    return found


def _token_parts(token: str) -> tuple[str, str] | None:
    parts = token.split("_", 2)
    if len(parts) != 3 or parts[0] != "jt" or not parts[1] or not parts[2]:
        return None
    return parts[1], token


def node_register(*, token: str, name: str, agent_version: str, inventory: InventoryIn) -> RegisteredNode:
    """Turn an agent into a ``pending`` node of the token's provider and issue its credential.

    Contract: the token is consumed with a conditional update inside the same transaction that
    creates the node, so a token registers at most one node even under concurrent use; a bad,
    used or expired token raises (4xx) and creates nothing. An invalid inventory or an unknown
    device model is rejected before the token is touched, so the provider can fix it and retry.
    The credential ``nc_<prefix>_<secret>`` is returned once; only its SHA-256 is stored. The
    report is verified against the catalog (``providers.verification``) and the result stored on
    the node; ``verified_at`` is set only when every check passed.
    """
    name = name.strip()
    if not name or len(name) > Node._meta.get_field("name").max_length:  # type: ignore[operator]
        raise ValidationFailed(
            _("A node needs a name of 1 to 128 characters."), fields={"name": _("1 to 128 characters.")}
        )
    indexes = [d.index for d in inventory.devices]
    uuids = [d.uuid for d in inventory.devices]
    if len(set(indexes)) != len(indexes) or len(set(uuids)) != len(uuids):
        raise ValidationFailed(
            _("Device indexes and uuids must be unique within a node."),
            fields={"inventory.devices": _("Device indexes and uuids must be unique within a node.")},
        )
    parts = _token_parts(token.strip())
    join_token = None
    if parts is not None:
        join_token = JoinToken.objects.filter(prefix=parts[0]).first()
    if join_token is None or not secrets.compare_digest(join_token.token_hash, hash_secret(token.strip())):
        raise TokenInvalid(_("This join token is not valid."), fields={"token": _("Not a valid join token.")})
    accelerators = accelerators_for(inventory.devices)

    now = timezone.now()
    verification = node_verification(
        devices=inventory.devices, accelerators=accelerators, software=inventory.software, now=now
    )
    prefix = secrets.token_hex(6)
    credential = f"nc_{prefix}_{secrets.token_urlsafe(32)}"
    try:
        with transaction.atomic():
            consumed = JoinToken.objects.filter(
                pk=join_token.pk, used_at__isnull=True, expires_at__gt=now
            ).update(used_at=now, updated_at=now)
            if consumed != 1:
                join_token.refresh_from_db(fields=["used_at", "expires_at"])
                if join_token.used_at is not None:
                    raise TokenGone(
                        _("This join token was already used; create a new one."),
                        fields={"token": _("Already used.")},
                        code="token_used",
                    )
                raise TokenGone(
                    _("This join token has expired; create a new one."),
                    fields={"token": _("Expired.")},
                    code="token_expired",
                )
            host = inventory.host
            node = Node.objects.create(
                provider_id=join_token.provider_id,
                name=name,
                region=join_token.region,
                cluster=join_token.cluster,
                status=NodeStatus.PENDING,
                agent_version=agent_version[:32],
                credential_prefix=prefix,
                credential_hash=hash_secret(credential),
                cpu_model=host.cpu_model[:128],
                cpu_cores=host.cpu_cores,
                memory_mib=host.memory_mib,
                disk_gib=host.disk_gib,
                network=host.nics,
                software=inventory.software,
                verification=verification,
                verified_at=now if verification["passed"] else None,
            )
            Device.objects.bulk_create(
                Device(
                    node=node,
                    accelerator=accelerators[d.index],
                    index=d.index,
                    uuid=d.uuid,
                    bus_id=d.bus_id,
                    memory_mib=d.memory_mib,
                )
                for d in inventory.devices
            )
            JoinToken.objects.filter(pk=join_token.pk).update(node=node)
    except IntegrityError as exc:
        if "node_name_unique_per_provider" in str(exc):
            raise Conflict(
                _(
                    "This provider already has a node named %(name)s; join with another --name "
                    "or retire the old node."
                )
                % {"name": repr(name)},
                fields={"name": _("Already taken in this provider.")},
                code="node_name_taken",
            ) from None
        raise
    log.info(
        "node.registered node_id=%s provider_id=%s devices=%s verified=%s",
        node.pk,
        node.provider_id,
        len(inventory.devices),
        verification["passed"],
    )
    return RegisteredNode(node=node, credential=credential, heartbeat_interval=HEARTBEAT_INTERVAL_S)


# Node credentials are checked on every agent request (a heartbeat every 10 s per node); a short
# per-process cache keeps that off PostgreSQL. Bound: a retired node's credential keeps working
# in a process that has it cached for at most NODE_AUTH_CACHE_S.
NODE_AUTH_CACHE_S = 10.0
_node_auth_cache: dict[str, tuple[float, Node]] = {}
_node_auth_lock = threading.Lock()


def node_auth_cache_clear() -> None:
    with _node_auth_lock:
        _node_auth_cache.clear()


def node_authenticate(credential: str) -> Node | None:
    """The non-retired node holding ``credential``, or None (constant-time hash comparison).

    The returned node may be up to ``NODE_AUTH_CACHE_S`` old: use it for its id and provider,
    re-read anything that must be current.
    """
    parts = credential.split("_", 2)
    if len(parts) != 3 or parts[0] != "nc" or not parts[1]:
        return None
    digest = hash_secret(credential)
    now = time.monotonic()
    cached = _node_auth_cache.get(digest)
    if cached is not None and now - cached[0] < NODE_AUTH_CACHE_S:
        return cached[1]
    node = Node.objects.filter(credential_prefix=parts[1]).exclude(status=NodeStatus.RETIRED).first()
    if node is None or not secrets.compare_digest(node.credential_hash, digest):
        return None
    with _node_auth_lock:
        if len(_node_auth_cache) > 100_000:
            _node_auth_cache.clear()
        _node_auth_cache[digest] = (now, node)
    return node


# --- Heartbeats --------------------------------------------------------------------------------


@dataclass(frozen=True)
class DeviceReading:
    index: int
    uuid: str
    health: str
    utilization_pct: float | None = None
    memory_used_mib: int | None = None
    power_w: float | None = None
    temperature_c: float | None = None


@dataclass(frozen=True)
class HeartbeatIn:
    agent_version: str
    running_jobs: list[int]
    devices: list[DeviceReading]


def heartbeat_record(*, node: Node, payload: HeartbeatIn, now: float | None = None) -> None:
    """Record a heartbeat in Redis only (one pipeline, one round trip).

    The hot path never writes PostgreSQL: ``heartbeats_flush`` moves the latest heartbeat of
    every node there in bulk, every few seconds.
    """
    seen = time.time() if now is None else now
    devices = [
        {
            "index": d.index,
            "uuid": d.uuid,
            "health": d.health,
            "utilization_pct": d.utilization_pct,
            "memory_used_mib": d.memory_used_mib,
            "power_w": d.power_w,
            "temperature_c": d.temperature_c,
        }
        for d in payload.devices
    ]
    key = HEARTBEAT_KEY.format(node_id=node.pk)
    pipe = redis_client().pipeline(transaction=False)
    pipe.hset(
        key,
        mapping={
            "last_seen": f"{seen:.3f}",
            "agent_version": payload.agent_version[:32],
            "devices": json.dumps(devices, separators=(",", ":")),
            "running_jobs": json.dumps(payload.running_jobs, separators=(",", ":")),
        },
    )
    pipe.expire(key, HEARTBEAT_KEY_TTL_S)
    pipe.sadd(HEARTBEAT_DIRTY_KEY, node.pk)
    pipe.execute()


def heartbeat_latest(*, node_id: int) -> dict[str, Any] | None:
    """The node's latest heartbeat as recorded in Redis (``last_seen`` epoch seconds), or None."""
    raw = redis_client().hgetall(HEARTBEAT_KEY.format(node_id=node_id))
    if not raw:
        return None
    values = {_text(k): _text(v) for k, v in raw.items()}
    return {
        "last_seen": float(values.get("last_seen", "0")),
        "agent_version": values.get("agent_version", ""),
        "devices": json.loads(values.get("devices", "[]")),
        "running_jobs": json.loads(values.get("running_jobs", "[]")),
    }


_HEALTH_VALUES = frozenset(DeviceHealth.values)
_FLUSH_BATCH = 1000


def heartbeats_flush(*, now: datetime | None = None) -> int:
    """Move the latest Redis heartbeat of every node that sent one into PostgreSQL, in bulk.

    Contract: sets ``last_heartbeat_at`` (never backwards), ``agent_version`` and device health,
    and moves ``pending``/``suspect``/``offline`` nodes whose heartbeat is fresh to ``online``.
    Safe to run twice or concurrently (a node is claimed from the dirty set by ``SPOP``; the
    update is a no-op for an older heartbeat). On a database error the claimed nodes are put
    back. Returns the number of nodes flushed.
    """
    client = redis_client()
    total = 0
    while True:
        raw_ids = client.spop(HEARTBEAT_DIRTY_KEY, _FLUSH_BATCH)
        if not raw_ids:
            break
        node_ids = [int(raw) for raw in raw_ids]
        try:
            pipe = client.pipeline(transaction=False)
            for node_id in node_ids:
                pipe.hmget(HEARTBEAT_KEY.format(node_id=node_id), "last_seen", "agent_version", "devices")
            rows = pipe.execute()
            _flush_rows(node_ids, rows, now=now or timezone.now())
        except Exception:
            client.sadd(HEARTBEAT_DIRTY_KEY, *node_ids)
            raise
        total += len(node_ids)
        if len(node_ids) < _FLUSH_BATCH:
            break
    if total:
        log.info("heartbeats.flushed nodes=%s", total)
    return total


def _text(value: bytes | str | None) -> str:
    if value is None:
        return ""
    return value.decode() if isinstance(value, bytes) else value


def _flush_rows(node_ids: list[int], rows: list[list[bytes | None]], *, now: datetime) -> None:
    node_values: list[Any] = []
    device_values: list[Any] = []
    for node_id, (last_seen, agent_version, devices) in zip(node_ids, rows, strict=True):
        if last_seen is None:
            continue  # the hash expired; nothing to move
        seen = datetime.fromtimestamp(float(last_seen), tz=UTC)
        node_values += [node_id, seen, _text(agent_version)[:32]]
        for device in json.loads(devices or b"[]"):
            if device.get("health") in _HEALTH_VALUES:
                device_values += [node_id, int(device["index"]), device["health"]]
    if not node_values:
        return
    node_rows = ", ".join(["(%s::bigint, %s::timestamptz, %s::varchar)"] * (len(node_values) // 3))
    fresh_after = now - SUSPECT_AFTER
    revivable = (NodeStatus.PENDING, NodeStatus.SUSPECT, NodeStatus.OFFLINE)
    with transaction.atomic(), connection.cursor() as cursor:
        # Only a newer heartbeat moves a row, so a late or doubled flush changes nothing; only a
        # fresh one brings a node (back) online.
        cursor.execute(
            f"""
            UPDATE {Node._meta.db_table} AS n
               SET last_heartbeat_at = v.seen,
                   agent_version = v.agent_version,
                   status = CASE WHEN n.status IN (%s, %s, %s) AND v.seen > %s THEN %s ELSE n.status END,
                   updated_at = %s
              FROM (VALUES {node_rows}) AS v(id, seen, agent_version)
             WHERE n.id = v.id AND (n.last_heartbeat_at IS NULL OR n.last_heartbeat_at < v.seen)
            """,  # noqa: S608 - constant identifiers, values are parameters
            [*revivable, fresh_after, NodeStatus.ONLINE, now, *node_values],
        )
        if device_values:
            device_rows = ", ".join(["(%s::bigint, %s::int, %s::varchar)"] * (len(device_values) // 3))
            cursor.execute(
                f"""
                UPDATE {Device._meta.db_table} AS d SET health = v.health
                  FROM (VALUES {device_rows}) AS v(node_id, idx, health)
                 WHERE d.node_id = v.node_id AND d.index = v.idx AND d.health <> v.health
                """,  # noqa: S608
                device_values,
            )


# --- Liveness ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class LivenessResult:
    suspect: list[int]
    offline: list[int]


def liveness_sweep(*, now: datetime | None = None) -> LivenessResult:
    """Move silent nodes ``online -> suspect`` (45 s) and ``online|suspect -> offline`` (150 s).

    Contract: each move is one conditional ``UPDATE ... RETURNING`` on the current status and
    the last heartbeat, so a heartbeat flushed concurrently wins and a second run changes
    nothing. Returns the node ids that moved; the marketplace reacts to ``offline`` ones (their
    jobs become lost). Callers should flush heartbeats first (``providers.tasks`` does).
    """
    now = now or timezone.now()
    table = Node._meta.db_table
    with connection.cursor() as cursor:
        cursor.execute(
            f"UPDATE {table} SET status = %s, updated_at = %s "  # noqa: S608
            "WHERE status IN (%s, %s) AND last_heartbeat_at < %s RETURNING id",
            [NodeStatus.OFFLINE, now, NodeStatus.ONLINE, NodeStatus.SUSPECT, now - OFFLINE_AFTER],
        )
        offline = sorted(row[0] for row in cursor.fetchall())
        cursor.execute(
            f"UPDATE {table} SET status = %s, updated_at = %s "  # noqa: S608
            "WHERE status = %s AND last_heartbeat_at < %s RETURNING id",
            [NodeStatus.SUSPECT, now, NodeStatus.ONLINE, now - SUSPECT_AFTER],
        )
        suspect = sorted(row[0] for row in cursor.fetchall())
    if suspect or offline:
        log.info("nodes.liveness suspect=%s offline=%s", suspect, offline)
    return LivenessResult(suspect=suspect, offline=offline)


def inventory_from_json(data: Mapping[str, Any]) -> InventoryIn:
    """Build an ``InventoryIn`` from already-validated JSON (see the register serializer)."""
    host = data["host"]
    return InventoryIn(
        host=HostIn(
            cpu_model=host["cpu_model"],
            cpu_cores=host["cpu_cores"],
            memory_mib=host["memory_mib"],
            disk_gib=host["disk_gib"],
            nics=list(host.get("nics") or []),
        ),
        devices=[
            DeviceIn(
                vendor=d["vendor"],
                model=d["model"],
                index=d["index"],
                uuid=d["uuid"],
                bus_id=d.get("bus_id") or "",
                memory_mib=d.get("memory_mib") or 0,
            )
            for d in data["devices"]
        ],
        software=dict(data.get("software") or {}),
    )
