"""Provider write services: join tokens, node registration, heartbeats and liveness.

Secrets (join tokens, node credentials) follow the API-key scheme of ``core.services``:
``<kind>_<prefix>_<secret>``; the prefix finds the row, the SHA-256 of the whole string (high
entropy, so no slow hash is needed) authenticates it, and the string itself is shown once.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import re
import secrets
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any, cast

from django.conf import settings
from django.contrib.auth.models import User
from django.db import DataError, IntegrityError, connection, transaction
from django.utils import timezone
from django.utils.translation import gettext as _

from core.errors import Conflict, SuanliError, ValidationFailed
from core.redis import HEARTBEAT_PENDING_SINCE_KEY, redis_client
from core.services import hash_secret
from providers.models import (
    PUE_MAX,
    PUE_MIN,
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


# --- Node settings -----------------------------------------------------------------------------


def node_pue_set(*, node: Node, pue: Decimal) -> Node:
    """Set the node's declared PUE (power usage effectiveness), which scales its offer's carbon
    estimate.

    Contract: ``pue`` is a finite decimal from 1.00 to 3.00 with at most two decimal places;
    anything else is ``ValidationFailed`` naming the ``pue`` field and nothing changes. One
    single-column update, so it never races the heartbeat flush or price changes on the same row.
    Returns ``node`` with the new value.
    """
    message = _("Enter a number from %(min)s to %(max)s with at most two decimal places, e.g. 1.25.") % {
        "min": PUE_MIN,
        "max": PUE_MAX,
    }
    if (
        not isinstance(pue, Decimal)
        or not pue.is_finite()
        or not PUE_MIN <= pue <= PUE_MAX
        or pue != pue.quantize(Decimal("0.01"))
    ):
        raise ValidationFailed(message, fields={"pue": message})
    pue = pue.quantize(Decimal("0.01"))
    Node.objects.filter(pk=node.pk).update(pue=pue, updated_at=timezone.now())
    node.pue = pue
    log.info("node.pue_set node_id=%s pue=%s", node.pk, pue)
    return node


# --- Registration ------------------------------------------------------------------------------


@dataclass(frozen=True)
class HostIn:
    cpu_model: str
    cpu_cores: int
    memory_mib: int
    disk_gib: int
    nics: list[dict[str, Any]]
    public_address: str = ""


# A node's public address: an IP literal or a DNS host name (RFC 1123 labels), nothing else. It is
# shown to buyers and pasted into their `ssh` command lines, so no spaces, options or user@ parts.
PUBLIC_ADDRESS_MAX = 253
_HOST_LABEL_RE = re.compile(r"^(?!-)[A-Za-z0-9-]{1,63}(?<!-)$")
_ADDRESS_CHARS_RE = re.compile(r"^[A-Za-z0-9.:-]+$")


def public_address_problem(value: object) -> str | None:
    """Why ``value`` is not a usable public address (an IP or a host name), or None."""
    if not isinstance(value, str):
        return _("An IP address or a host name.")
    if not value or len(value) > PUBLIC_ADDRESS_MAX or "\x00" in value:
        return _("An IP address or a host name of at most %(count)s characters.") % {
            "count": PUBLIC_ADDRESS_MAX
        }
    # Letters, digits, ".", ":" and "-" only: an IPv6 zone ("fe80::1%eth0") means nothing to a
    # buyer elsewhere, and ipaddress would accept any text after its "%".
    if not _ADDRESS_CHARS_RE.match(value):
        return _("An IP address or a host name.")
    try:
        ipaddress.ip_address(value)
        return None
    except ValueError:
        pass
    labels = value.removesuffix(".").split(".")
    if all(_HOST_LABEL_RE.match(label) for label in labels) and not labels[-1].isdigit():
        return None
    return _("An IP address or a host name.")


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
                public_address=host.public_address,
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
    # "" when the agent did not say (older agents): the stored address stays.
    public_address: str = ""


def node_public_address_set(*, node: Node, address: str) -> bool:
    """Store the node's public address if it changed; True when a row was written.

    A single-column conditional update, so it never races the heartbeat flush or a provider's
    edits of other columns. ``node`` (possibly the credential cache's copy) is updated in place,
    so the next heartbeats through the same process skip the write.
    """
    if not address or node.public_address == address:
        return False
    changed = (
        Node.objects.filter(pk=node.pk)
        .exclude(public_address=address)
        .update(public_address=address, updated_at=timezone.now())
    )
    node.public_address = address
    if changed:
        log.info("node.public_address node_id=%s address=%s", node.pk, address)
    return bool(changed)


def heartbeat_record(*, node: Node, payload: HeartbeatIn, now: float | None = None) -> None:
    """Record a heartbeat in Redis only (one pipeline, one round trip).

    The hot path never writes PostgreSQL: ``heartbeats_flush`` moves the latest heartbeat of
    every node there in bulk, every few seconds. The one exception is a changed public address
    (``node_public_address_set``), written once when it changes.
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
    pipe.set(HEARTBEAT_PENDING_SINCE_KEY, f"{seen:.3f}", nx=True)
    pipe.execute()
    # The address rarely changes: PostgreSQL is written only when it does (a new IP after a
    # reboot, a provider's --public-address), never on a steady heartbeat.
    node_public_address_set(node=node, address=payload.public_address)


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
# A node's measured power is that of its devices in use: an idle device draws a fraction of its
# TDP, and averaging idle readings in would make an unused node look green to the buyer who is
# about to load it. Readings from devices at this utilisation or above count.
MEASURED_POWER_MIN_UTILIZATION_PCT = 50.0
# Time constant of the node's moving average of measured power: a reading moves it by
# (seconds since the previous heartbeat) / this, so an hour of load mostly replaces the old figure.
MEASURED_POWER_TAU_S = 3600
_POWER_MAX_W = 100_000.0  # the heartbeat serializer's bound


def heartbeats_flush(*, now: datetime | None = None) -> int:
    """Move the latest Redis heartbeat of every node that sent one into PostgreSQL, in bulk.

    Contract: sets ``last_heartbeat_at`` (never backwards), ``agent_version`` and device health,
    moves ``pending``/``suspect``/``offline`` nodes whose heartbeat is fresh to ``online``, and
    folds the mean power of the node's busy devices into ``measured_power_w`` (a time-weighted
    moving average; a heartbeat with no busy device leaves it as it was).
    Safe to run twice or concurrently (a node is claimed from the dirty set by ``SPOP``; the
    update is a no-op for an older heartbeat). One node's bad data never stops the others: an
    entry that cannot be read, or that PostgreSQL refuses, is logged and discarded. On any other
    error (Redis or the database down) the claimed nodes are put back and the error raised.
    Returns the number of nodes flushed.
    """
    client = redis_client()
    total = 0
    while True:
        raw_ids = cast(list[bytes], client.spop(HEARTBEAT_DIRTY_KEY, _FLUSH_BATCH))
        if not raw_ids:
            break
        node_ids = _node_ids(raw_ids)
        try:
            pipe = client.pipeline(transaction=False)
            for node_id in node_ids:
                pipe.hmget(HEARTBEAT_KEY.format(node_id=node_id), "last_seen", "agent_version", "devices")
            rows, discarded = _flush_rows(node_ids, pipe.execute())
            discarded += _flush_write(rows, now=now or timezone.now())
        except Exception:
            if node_ids:
                client.sadd(HEARTBEAT_DIRTY_KEY, *node_ids)
            raise
        if discarded:
            # Only the bad entry goes: the node's next valid heartbeat writes a fresh one.
            client.delete(*(HEARTBEAT_KEY.format(node_id=node_id) for node_id in discarded))
        total += len(node_ids) - len(discarded)
        if len(raw_ids) < _FLUSH_BATCH:
            break
    # Everything waiting was moved (or discarded): nothing is stale now.
    client.delete(HEARTBEAT_PENDING_SINCE_KEY)
    if total:
        log.info("heartbeats.flushed nodes=%s", total)
    return total


def _text(value: bytes | str | None) -> str:
    if value is None:
        return ""
    return value.decode() if isinstance(value, bytes) else value


def _node_ids(raw_ids: list[bytes]) -> list[int]:
    node_ids = []
    for raw in raw_ids:
        try:
            node_ids.append(int(raw))
        except ValueError:
            log.warning("heartbeat.discarded node_id=%r error=not a node id", raw)
    return node_ids


@dataclass(frozen=True)
class _FlushRow:
    node_id: int
    seen: datetime
    agent_version: str
    health: list[tuple[int, str]]  # (device index, health)
    power_w: Decimal | None = None  # mean power of the devices in use, W


def _number(value: object) -> float | None:
    """A JSON number as float (not a bool, not NaN or infinite), else None."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    number = float(value)
    return number if number == number and abs(number) != float("inf") else None


def _busy_power(readings: list[dict[str, Any]]) -> Decimal | None:
    """Mean power of the devices in use (see ``MEASURED_POWER_MIN_UTILIZATION_PCT``), or None.

    A reading that is missing or out of range is skipped, not fatal: the heartbeat's liveness and
    health still count."""
    powers = []
    for device in readings:
        power, utilization = _number(device.get("power_w")), _number(device.get("utilization_pct"))
        # A busy device reporting 0 W is a broken sensor, not a free lunch.
        if power is None or utilization is None or not 0 < power <= _POWER_MAX_W:
            continue
        if MEASURED_POWER_MIN_UTILIZATION_PCT <= utilization <= 100:
            powers.append(power)
    if not powers:
        return None
    return Decimal(repr(sum(powers) / len(powers))).quantize(Decimal("0.1"))


def _flush_row(
    node_id: int, last_seen: bytes, agent_version: bytes | None, devices: bytes | None
) -> _FlushRow:
    """One node's Redis heartbeat as PostgreSQL values; raises ``ValueError`` when unusable."""
    seen = datetime.fromtimestamp(float(last_seen), tz=UTC)
    version = _text(agent_version)[:32]
    if "\x00" in version:  # PostgreSQL text cannot hold NUL
        raise ValueError("NUL in agent_version")
    health = []
    readings = json.loads(devices or b"[]")
    if not isinstance(readings, list):
        raise ValueError("devices is not a list")
    for device in readings:
        if not isinstance(device, dict):
            raise ValueError("a device is not an object")
        index = device.get("index")
        if device.get("health") in _HEALTH_VALUES and isinstance(index, int) and 0 <= index <= 32767:
            health.append((index, device["health"]))
    return _FlushRow(
        node_id=node_id, seen=seen, agent_version=version, health=health, power_w=_busy_power(readings)
    )


def _flush_rows(node_ids: list[int], rows: list[list[bytes | None]]) -> tuple[list[_FlushRow], list[int]]:
    """The usable rows, and the node ids whose entries cannot be used (to be discarded)."""
    parsed: list[_FlushRow] = []
    bad: list[int] = []
    for node_id, (last_seen, agent_version, devices) in zip(node_ids, rows, strict=True):
        if last_seen is None:
            continue  # the hash expired; nothing to move
        try:
            parsed.append(_flush_row(node_id, last_seen, agent_version, devices))
        except (ValueError, TypeError, OverflowError, OSError) as exc:  # UnicodeDecodeError, JSON too
            log.warning("heartbeat.discarded node_id=%s error=%s", node_id, exc)
            bad.append(node_id)
    return parsed, bad


def _flush_write(rows: list[_FlushRow], *, now: datetime) -> list[int]:
    """Write ``rows`` in bulk; returns the node ids whose entries were discarded."""
    discarded: list[int] = []
    if not rows:
        return discarded
    try:
        with transaction.atomic():
            _flush_update(rows, now=now)
    except (DataError, ValueError):
        # Something in the batch that the checks above let through (the driver refuses a NUL
        # with ValueError before sending); find it row by row so the other nodes still flush.
        for row in rows:
            try:
                with transaction.atomic():
                    _flush_update([row], now=now)
            except (DataError, ValueError) as exc:
                log.warning("heartbeat.discarded node_id=%s error=%s", row.node_id, str(exc).strip())
                discarded.append(row.node_id)
    return discarded


def _flush_update(rows: list[_FlushRow], *, now: datetime) -> None:
    node_values: list[Any] = []
    device_values: list[Any] = []
    for row in rows:
        node_values += [row.node_id, row.seen, row.agent_version, row.power_w]
        for index, health in row.health:
            device_values += [row.node_id, index, health]
    node_rows = ", ".join(["(%s::bigint, %s::timestamptz, %s::varchar, %s::numeric)"] * len(rows))
    fresh_after = now - SUSPECT_AFTER
    revivable = (NodeStatus.PENDING, NodeStatus.SUSPECT, NodeStatus.OFFLINE)
    with connection.cursor() as cursor:
        # Only a newer heartbeat moves a row, so a late or doubled flush changes nothing; only a
        # fresh one brings a node (back) online. The power average weighs a reading by the time
        # since the previous heartbeat (the SET clause sees the old row), so flushing every
        # heartbeat or only the latest of several gives about the same figure.
        cursor.execute(
            f"""
            UPDATE {Node._meta.db_table} AS n
               SET last_heartbeat_at = v.seen,
                   agent_version = v.agent_version,
                   status = CASE WHEN n.status IN (%s, %s, %s) AND v.seen > %s THEN %s ELSE n.status END,
                   measured_power_w = CASE
                       WHEN v.power IS NULL THEN n.measured_power_w
                       WHEN n.measured_power_w IS NULL OR n.last_heartbeat_at IS NULL THEN v.power
                       ELSE n.measured_power_w + (v.power - n.measured_power_w)
                            * LEAST(1, EXTRACT(EPOCH FROM (v.seen - n.last_heartbeat_at)) / %s)
                   END,
                   updated_at = %s
              FROM (VALUES {node_rows}) AS v(id, seen, agent_version, power)
             WHERE n.id = v.id AND (n.last_heartbeat_at IS NULL OR n.last_heartbeat_at < v.seen)
            """,  # noqa: S608 - constant identifiers, values are parameters
            [*revivable, fresh_after, NodeStatus.ONLINE, MEASURED_POWER_TAU_S, now, *node_values],
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
            public_address=host.get("public_address") or "",
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
