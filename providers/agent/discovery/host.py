"""Host facts: CPU, RAM, disk and NICs via psutil and /proc."""

from __future__ import annotations

import platform
import socket
import uuid as uuidlib

import psutil

from providers.agent.discovery.probe import read_text
from providers.agent.discovery.types import Device, Host


def cpu_model() -> str:
    text = read_text("/proc/cpuinfo") or ""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("model name", "Model name", "cpu model") and value.strip():
            return value.strip()
    return platform.processor() or platform.machine() or "unknown CPU"


def nics() -> list[dict[str, object]]:
    out: list[dict[str, object]] = []
    stats = psutil.net_if_stats()
    addrs = psutil.net_if_addrs()
    for name in sorted(stats):
        if name == "lo" or name.startswith(("docker", "veth", "br-", "virbr")):
            continue
        mac = next((a.address for a in addrs.get(name, []) if a.family == psutil.AF_LINK), None)
        out.append({"name": name, "speed_mbps": stats[name].speed or None, "mac": mac})
    return out


def discover_host(disk_path: str = "/") -> Host:
    try:
        disk_gib = int(psutil.disk_usage(disk_path).total // (1024**3))
    except OSError:
        disk_gib = 0
    return Host(
        cpu_model=cpu_model(),
        cpu_cores=psutil.cpu_count(logical=True) or 1,
        memory_mib=int(psutil.virtual_memory().total // (1024 * 1024)),
        disk_gib=disk_gib,
        nics=nics(),
    )


def generic_cpu_model(machine: str | None = None) -> str:
    """The catalog's generic CPU entry: `x86-64 CPU` or `arm64 CPU`."""
    arch = (machine or platform.machine()).lower()
    return "arm64 CPU" if arch in ("aarch64", "arm64") else "x86-64 CPU"


def cpu_device(host: Host) -> Device:
    """A CPU-only node rents its whole host as one `cpu` device."""
    machine_id = (read_text("/etc/machine-id") or "").strip() or platform.node()
    return Device(
        vendor="cpu",
        model=generic_cpu_model(),
        index=0,
        uuid=f"cpu-{uuidlib.uuid5(uuidlib.NAMESPACE_OID, machine_id)}",
        bus_id=None,
        memory_mib=host.memory_mib,
    )


def primary_address(server_url: str = "") -> str:
    """The address this host's traffic to the exchange leaves from ("" when none is found).

    A UDP socket "connected" to the exchange sends nothing but makes the kernel choose the source
    address of its route: the primary outbound address, which is the public one on a node with a
    public IP. Behind NAT it is private: then the provider passes ``--public-address``.
    """
    from urllib.parse import urlsplit

    host = urlsplit(server_url).hostname if server_url else None
    port = urlsplit(server_url).port if server_url else None
    targets = [(host, port or 443)] if host else []
    # A documentation address (RFC 5737): only the route matters, no packet is sent.
    targets.append(("192.0.2.1", 9))
    for target_host, target_port in targets:
        try:
            infos = socket.getaddrinfo(target_host, target_port, proto=socket.IPPROTO_UDP)
        except (OSError, UnicodeError):
            continue
        for family, _type, _proto, _name, sockaddr in infos:
            try:
                with socket.socket(family, socket.SOCK_DGRAM) as sock:
                    sock.connect(sockaddr)
                    address = str(sock.getsockname()[0]).split("%", 1)[0]
            except OSError:
                continue
            if address and address not in ("0.0.0.0", "::"):  # noqa: S104 - unbound, not a bind
                return address
    return ""
