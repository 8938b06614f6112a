"""`suanli-agent`: detect hardware, join the exchange, run the daemon.

Exit codes: 0 ok, 1 unexpected error, 2 bad input or a 4xx from the server, 3 server
unreachable. Errors are one line on stderr (`error: ...`), never a traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
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
    return parser


def _env_float(name: str, default: float | None = None) -> float | None:
    value = os.environ.get(name)
    try:
        return float(value) if value else default
    except ValueError:
        return default


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
    inventory["software"]["runtimes"] = ",".join(_runtimes(args.allow_process_runtime, args.simulate))
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
    )
    allowed = _runtimes(args.allow_process_runtime or bool(cred.get("allow_process_runtime")), simulate)
    from providers.agent.runtimes.docker import DockerRuntime
    from providers.agent.runtimes.process import ProcessRuntime

    runtimes: dict[str, Any] = {"docker": DockerRuntime(state)}
    if "process" in allowed:
        runtimes["process"] = ProcessRuntime(state)
    Agent(config, inventory=inventory, telemetry=telemetry, runtimes=runtimes).run_forever()
    return EXIT_OK


COMMANDS = {"detect": cmd_detect, "join": cmd_join, "run": cmd_run}


def main(argv: list[str] | None = None) -> int:
    args = _build_parser().parse_args(argv)
    logging.basicConfig(
        level=getattr(logging, str(args.log_level).upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
        stream=sys.stderr,
    )
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
