"""`suanli-agent`: detect hardware, join the exchange, run the daemon.

Exit codes: 0 ok, 1 unexpected error, 2 bad input or a 4xx from the server, 3 server
unreachable. Errors are one line on stderr (`error: ...`), never a traceback.

Logs go to stderr in the exchange's one line format (`--log-format`, `SUANLI_AGENT_LOG_FORMAT`):
`json` (default) is one JSON object per line with `ts`, `level`, `logger`, `event`, then the
record's `extra` key-values, the same shape the web, worker and beat write (`core.logging`, which
the agent cannot import: it imports nothing from the server); `console` is for a human.
"""

from __future__ import annotations

import argparse
import getpass
import ipaddress
import json
import logging
import os
import re
import socket
import sys
from pathlib import Path
from typing import Any, NoReturn

from providers.agent import __version__

EXIT_OK, EXIT_ERROR, EXIT_INPUT, EXIT_UNREACHABLE = 0, 1, 2, 3


class UsageError(Exception):
    pass


# The process runtime runs a buyer's command directly on the host, as the agent's user: no
# container isolation. It is for trusted setups and simulated nodes, so a real node must opt in.
PROCESS_HELP = "also run jobs as plain host processes (no container isolation; simulated nodes always may)"


PUBLIC_ADDRESS_HELP = (
    "IP or host name buyers reach this node's jobs on (env SUANLI_AGENT_PUBLIC_ADDRESS; "
    "default: this host's primary outbound address)"
)
_HOST_LABEL_RE = re.compile(r"^(?!-)[A-Za-z0-9-]{1,63}(?<!-)$")


def _public_address_arg(value: str) -> str:
    """argparse type: an IP literal or a DNS host name, as the exchange accepts it."""
    value = value.strip()
    if not re.match(r"^[A-Za-z0-9.:-]+$", value):  # no IPv6 zone, spaces or user@
        raise argparse.ArgumentTypeError(f"not an IP address or host name: {value!r}")
    try:
        ipaddress.ip_address(value)
        return value
    except ValueError:
        pass
    labels = value.removesuffix(".").split(".")
    if 0 < len(value) <= 253 and all(_HOST_LABEL_RE.match(x) for x in labels) and not labels[-1].isdigit():
        return value
    raise argparse.ArgumentTypeError(f"not an IP address or host name: {value!r}")


def _public_address(arg: str | None, saved: object, server: str) -> str:
    """The address to report: the option (or its env var), else the one saved at join, else
    the primary outbound address towards the exchange."""
    if arg:
        return arg
    if isinstance(saved, str) and saved:
        return saved
    from providers.agent.discovery.host import primary_address

    return primary_address(server)


def _runtimes(allow_process: bool, simulate: str | None) -> list[str]:
    return ["docker", "process"] if allow_process or simulate else ["docker"]


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        # One line, like every other error of this CLI (argparse would print usage first).
        self.exit(EXIT_INPUT, f"error: {message}\n")


def _build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="suanli-agent", description="Suanli Exchange provider agent")
    parser.add_argument("--version", action="version", version=f"suanli-agent {__version__}")
    parser.add_argument("--log-level", default=os.environ.get("SUANLI_AGENT_LOG_LEVEL", "INFO"))
    parser.add_argument(
        "--log-format",
        choices=LOG_FORMATS,
        default=os.environ.get("SUANLI_AGENT_LOG_FORMAT") or "json",
        help="log line format on stderr (default json; env SUANLI_AGENT_LOG_FORMAT)",
    )
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    detect = sub.add_parser("detect", help="print the hardware inventory")
    detect.add_argument("--json", action="store_true", help="machine-readable output")
    detect.add_argument("--simulate", metavar="PROFILE", help="simulated hardware profile")
    detect.add_argument("--name", help="node name (seeds simulated uuids)")

    join = sub.add_parser("join", help="register this node with a join token")
    join.add_argument("--server", required=True, help="exchange URL, e.g. https://suanli.example")
    join.add_argument("--token", required=True, help="one-time join token from the portal")
    join.add_argument("--name", help="node name (default: host name)")
    join.add_argument("--state-dir", type=Path)
    join.add_argument("--simulate", metavar="PROFILE")
    join.add_argument("--force", action="store_true", help="re-register over an existing node")
    join.add_argument("--allow-process-runtime", action="store_true", help=PROCESS_HELP)
    join.add_argument("--public-address", type=_public_address_arg, default=None, help=PUBLIC_ADDRESS_HELP)

    run = sub.add_parser("run", help="run the agent daemon")
    run.add_argument("--state-dir", type=Path)
    run.add_argument("--simulate", metavar="PROFILE")
    run.add_argument(
        "--heartbeat-interval", type=float, default=_env_float("SUANLI_AGENT_HEARTBEAT_INTERVAL")
    )
    run.add_argument(
        "--sample-interval", type=float, default=_env_float("SUANLI_AGENT_SAMPLE_INTERVAL", 30.0)
    )
    run.add_argument("--work-wait", type=int, default=25, help="long-poll seconds")
    run.add_argument("--allow-process-runtime", action="store_true", help=PROCESS_HELP)
    run.add_argument("--public-address", type=_public_address_arg, default=None, help=PUBLIC_ADDRESS_HELP)
    return parser


LOG_FORMATS = ("json", "console")
# Keys every JSON line starts with, in this order (as core.logging writes them on the server).
_LEADING_KEYS = ("ts", "level", "logger", "event")


def _leading_keys_first(_logger: Any, _method: str, event_dict: dict[str, Any]) -> dict[str, Any]:
    ordered = {key: event_dict.pop(key, None) for key in _LEADING_KEYS}
    ordered.update(event_dict)
    return ordered


def logging_setup(*, level: str, log_format: str) -> logging.Handler:
    """One stderr handler on the root logger writing ``log_format`` lines; returns it.

    Replaces the handler an earlier call installed (tests call ``main`` more than once), and
    leaves any other handler alone.
    """
    import structlog

    if log_format == "json":
        renderer: list[Any] = [
            structlog.processors.format_exc_info,
            _leading_keys_first,
            structlog.processors.JSONRenderer(ensure_ascii=False),
        ]
    else:
        renderer = [structlog.dev.ConsoleRenderer(colors=False, timestamp_key="ts")]
    handler = logging.StreamHandler(sys.stderr)
    handler.set_name("suanli-agent")
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[
                structlog.stdlib.add_log_level,
                structlog.stdlib.add_logger_name,
                structlog.processors.TimeStamper(fmt="iso", utc=True, key="ts"),
                structlog.stdlib.ExtraAdder(),
            ],
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, *renderer],
        )
    )
    root = logging.getLogger()
    for old in [h for h in root.handlers if h.get_name() == "suanli-agent"]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(getattr(logging, level.upper(), logging.INFO))
    return handler


def _env_float(name: str, default: float | None = None) -> float | None:
    value = os.environ.get(name)
    try:
        return float(value) if value else default
    except ValueError:
        return default


def _env_public_address(arg: str | None) -> str | None:
    """The option, else ``SUANLI_AGENT_PUBLIC_ADDRESS`` (checked like the option)."""
    if arg:
        return arg
    value = os.environ.get("SUANLI_AGENT_PUBLIC_ADDRESS", "").strip()
    if not value:
        return None
    try:
        return _public_address_arg(value)
    except argparse.ArgumentTypeError as exc:
        raise UsageError(f"SUANLI_AGENT_PUBLIC_ADDRESS: {exc}") from None


def _state_dir(arg: Path | None) -> Path:
    from providers.agent.state import default_state_dir

    return arg if arg is not None else default_state_dir()


def _check_profile(profile: str | None) -> None:
    if profile is None:
        return
    from providers.agent.simulate import get_profile

    try:
        get_profile(profile)
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def _table(inv: dict[str, Any]) -> str:
    host = inv["host"]
    lines = [
        f"Host: {host['cpu_model']} ({host['cpu_cores']} cores), "
        f"{host['memory_mib'] // 1024} GiB RAM, {host['disk_gib']} GiB disk",
    ]
    nics = ", ".join(
        f"{n['name']}" + (f" {n['speed_mbps']} Mb/s" if n.get("speed_mbps") else "") for n in host["nics"]
    )
    lines.append(f"NICs: {nics or '-'}")
    lines.append("")
    header = ("IDX", "VENDOR", "MODEL", "MEMORY", "BUS", "UUID")
    rows = [
        (
            str(d["index"]),
            d["vendor"],
            d["model"],
            f"{d['memory_mib']} MiB" if d["memory_mib"] is not None else "-",
            d["bus_id"] or "-",
            d["uuid"],
        )
        for d in inv["devices"]
    ]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    for r in [header, *rows]:
        lines.append("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
    if inv["software"]:
        lines.append("")
        lines.append("Software: " + ", ".join(f"{k} {v}" for k, v in sorted(inv["software"].items())))
    return "\n".join(lines)


def cmd_detect(args: argparse.Namespace) -> int:
    from providers.agent.discovery import detect

    _check_profile(args.simulate)
    inv = detect(simulate=args.simulate, name=args.name or socket.gethostname()).to_json()
    print(json.dumps(inv, indent=2) if args.json else _table(inv))
    return EXIT_OK


def cmd_join(args: argparse.Namespace) -> int:
    from providers.agent.client import AgentClient
    from providers.agent.discovery import detect
    from providers.agent.state import StateDir

    _check_profile(args.simulate)
    state = StateDir(_state_dir(args.state_dir))
    if state.credential_path.exists() and not args.force:
        raise UsageError(f"already joined (credential at {state.credential_path}); use --force")
    name = args.name or socket.gethostname()
    inventory = detect(simulate=args.simulate, name=name).to_json()
    runtimes = _runtimes(args.allow_process_runtime, args.simulate)
    inventory["software"]["runtimes"] = ",".join(runtimes)
    if "process" in runtimes:
        # An SSH-mode process job is reached as the agent's own user (the exchange shows it).
        inventory["software"]["process_user"] = getpass.getuser()
    public_address = _public_address(_env_public_address(args.public_address), None, args.server)
    if public_address:
        inventory["host"]["public_address"] = public_address
    reply = AgentClient(args.server).register(token=args.token, name=name, inventory=inventory)
    if not isinstance(reply, dict) or not reply.get("credential"):
        raise UsageError("the server did not return a node credential")
    state.save_credential(
        {
            "server": args.server.rstrip("/"),
            "node_id": reply.get("node_id"),
            "credential": reply["credential"],
            "heartbeat_interval": reply.get("heartbeat_interval", 10),
            "name": name,
            "simulate": args.simulate,
            "allow_process_runtime": bool(args.allow_process_runtime),
            # Only a chosen address is kept: a detected one is detected again at every start.
            "public_address": _env_public_address(args.public_address) or "",
        }
    )
    print(f"joined as node {reply.get('node_id')} ({name}); credential in {state.credential_path}")
    return EXIT_OK


def cmd_run(args: argparse.Namespace) -> int:
    from providers.agent.daemon import Agent, AgentConfig
    from providers.agent.discovery import detect
    from providers.agent.state import StateDir

    _check_profile(args.simulate)
    state = StateDir(_state_dir(args.state_dir))
    cred = state.load_credential()
    if not cred or not cred.get("credential") or not cred.get("server"):
        raise UsageError(f"not joined: no credential in {state.root}; run `suanli-agent join` first")
    simulate = args.simulate or cred.get("simulate")
    name = str(cred.get("name") or socket.gethostname())
    inventory = detect(simulate=simulate, name=name)
    if simulate:
        from providers.agent.simulate import SimulatedTelemetry

        telemetry: Any = SimulatedTelemetry(simulate, name)
    else:
        from providers.agent.telemetry import real_telemetry

        telemetry = real_telemetry({d.vendor for d in inventory.devices})
    config = AgentConfig(
        state_dir=state.root,
        server=str(cred["server"]),
        credential=str(cred["credential"]),
        name=name,
        simulate=simulate,
        heartbeat_interval=args.heartbeat_interval or float(cred.get("heartbeat_interval") or 10),
        sample_interval=args.sample_interval,
        work_wait=args.work_wait,
        public_address=_public_address(
            _env_public_address(args.public_address), cred.get("public_address"), str(cred["server"])
        ),
    )
    allowed = _runtimes(args.allow_process_runtime or bool(cred.get("allow_process_runtime")), simulate)
    from providers.agent.runtimes.docker import DockerRuntime
    from providers.agent.runtimes.process import ProcessRuntime

    runtimes: dict[str, Any] = {"docker": DockerRuntime(state)}
    if "process" in allowed:
        runtimes["process"] = ProcessRuntime(state, public_address=config.public_address)
    Agent(config, inventory=inventory, telemetry=telemetry, runtimes=runtimes).run_forever()
    return EXIT_OK


COMMANDS = {"detect": cmd_detect, "join": cmd_join, "run": cmd_run}


def main(argv: list[str] | None = None) -> int:
    parser = _build_parser()
    args = parser.parse_args(argv)
    if args.log_format not in LOG_FORMATS:  # argparse checks choices, not an environment default
        parser.error(f"SUANLI_AGENT_LOG_FORMAT must be json or console, got {args.log_format!r}")
    logging_setup(level=str(args.log_level), log_format=args.log_format)
    from providers.agent.client import ApiError, Unreachable

    try:
        return COMMANDS[args.command](args)
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_INPUT
    except ApiError as exc:
        print(f"error: {exc.message or exc.code or f'HTTP {exc.status}'}", file=sys.stderr)
        return EXIT_INPUT
    except Unreachable as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_UNREACHABLE
    except KeyboardInterrupt:
        return 130
    except OSError as exc:
        print(f"error: {exc.strerror or exc}: {exc.filename or ''}".rstrip(": "), file=sys.stderr)
        return EXIT_ERROR
    except Exception as exc:
        logging.getLogger("suanli_agent").debug("unexpected", exc_info=True)
        print(f"error: unexpected {exc.__class__.__name__}: {exc}", file=sys.stderr)
        return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
