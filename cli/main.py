"""`suanli`: rent and provide compute on Suanli Exchange from the terminal.

Every command speaks the REST API (docs/api.md) and takes ``--json`` to print the API's JSON
instead of a table. Errors are one line on stderr; the exit code says what happened (see
``EXIT CODES`` in ``suanli --help``).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
from collections.abc import Callable, Sequence
from decimal import Decimal
from typing import Any

from cli import __version__
from cli.client import (
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_REFUSED,
    EXIT_UNAVAILABLE,
    EXIT_USAGE,
    ApiError,
    Client,
    CliError,
    config_load,
    config_path,
    config_save,
    new_idempotency_key,
)
from cli.render import Progress, endpoint_rows, fields, price_chart, sparkline, ssh_argv, table

EXIT_CODES = """\
exit codes:
  0    success
  1    the server refused the request (invalid input ...), or the job ended unsuccessfully
  2    usage error, or not logged in
  3    authentication: invalid or revoked key, or the key lacks the scope (401/403)
  4    not found (404)
  5    conflict or insufficient funds (409/402)
  6    rate limited (429); retry after the time printed
  7    server error, network error or timeout
  130  interrupted
"""

TERMS = {"on-demand": "on_demand", "reserved": "reserved", "spot": "spot"}
ENDED_JOB = {"exited", "failed", "stopped", "preempted", "lost"}
ENDED_ORDER = {"ended", "cancelled", "failed"}


class Context:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.as_json: bool = bool(getattr(args, "json", False))
        config = config_load()
        self.server = args.server or os.environ.get("SUANLI_SERVER") or config.get("server", "")
        self.key = args.key or os.environ.get("SUANLI_API_KEY") or config.get("key")
        self._client: Client | None = None

    @property
    def client(self) -> Client:
        if self._client is None:
            self._client = Client(self.server, self.key)
        return self._client

    def emit(self, payload: Any, human: Callable[[], None]) -> None:
        if self.as_json:
            json.dump(payload, sys.stdout, indent=2, ensure_ascii=False)
            sys.stdout.write("\n")
        else:
            human()


# --- Account -----------------------------------------------------------------------------------


def cmd_login(ctx: Context) -> int:
    args = ctx.args
    if not args.server or not args.key:
        raise CliError("usage: suanli login --server URL --key KEY", EXIT_USAGE)
    client = Client(args.server, args.key)
    # Any call with the key checks it: 401 means it is wrong; 403 only that it lacks `read`.
    scopes: list[str] = []
    try:
        keys = client.get("/api/v1/api-keys", active="true")
        prefix = "_".join(args.key.split("_")[:2]) + "_"
        scopes = next((k["scopes"] for k in keys["results"] if k["key_prefix"] == prefix), [])
    except ApiError as exc:
        if exc.status != 403:
            raise
    path = config_save({"server": client.server, "key": args.key})
    payload = {"server": client.server, "config": str(path), "scopes": scopes}
    ctx.emit(payload, lambda: print(f"Logged in to {client.server} (key saved in {path}, mode 0600)."))
    return EXIT_OK


def cmd_wallet(ctx: Context) -> int:
    wallet = ctx.client.get("/api/v1/wallet")
    cur = wallet["currency"]
    ctx.emit(wallet, lambda: fields([
        ("balance", f"{wallet['balance']} {cur}"), ("held", f"{wallet['held']} {cur}"),
        ("reserved", f"{wallet['reserved']} {cur}"), ("available", f"{wallet['available']} {cur}"),
    ]))  # fmt: skip
    return EXIT_OK


def cmd_top_up(ctx: Context) -> int:
    top_up = ctx.client.post(
        "/api/v1/wallet/top-ups", {"amount": ctx.args.amount}, idempotency_key=new_idempotency_key()
    )
    ctx.emit(top_up, lambda: print(
        f"Pay {top_up['amount']} {top_up['currency']} at:\n{top_up['checkout_url']}\n"
        "Your wallet is credited when the payment completes."
    ))  # fmt: skip
    return EXIT_OK


def cmd_usage(ctx: Context) -> int:
    page = ctx.client.get("/api/v1/usage", job=ctx.args.job, status=ctx.args.status, limit=ctx.args.limit)
    rows = page["results"]
    ctx.emit(page, lambda: table(
        [(r["job_id"], r["status"], r["device_count"], f"{r['rate']} {r['currency']}/dev-h", r["started_at"],
          r["ends_at"], f"{r['charged']} {r['currency']}", r["owed"]) for r in rows],
        ["job", "status", "devices", "rate", "started", "ended", "charged", "owed"],
    ))  # fmt: skip
    return EXIT_OK


# --- Offers and orders ---------------------------------------------------------------------------


def cmd_offers(ctx: Context) -> int:
    a = ctx.args
    page = ctx.client.request("GET", "/api/v1/offers", params={
        "kind": a.kind, "vendor": a.vendor, "model": a.model, "min_memory_gib": a.min_memory, "region": a.region,
        "term": TERMS[a.term], "max_price": a.max_price, "min_reliability": a.min_reliability,
        "devices": a.devices, "sort": a.sort, "limit": a.limit,
    }, auth=False)  # fmt: skip
    price_key = {"on-demand": "on_demand_price", "reserved": "reserved_price", "spot": "spot_floor"}[a.term]
    rows = page["results"]
    ctx.emit(page, lambda: table(
        [(o["id"], o["accelerator"]["model"], o["free_devices"], o["device_count"], o["region"],
          f"{o[price_key]} {o['currency']}", o["price_per_pflop_hour"], o["kg_co2e_per_device_hour"],
          o.get("tops_per_watt"), o["reliability"], o["node"]["provider"]) for o in rows],
        ["offer", "model", "free", "devices", "region", f"{a.term} /dev-h", "/PFLOP-h", "kgCO2e/h", "TOPS/W",
         "reliab.", "provider"],
    ))  # fmt: skip
    return EXIT_OK


def _order_body(a: argparse.Namespace) -> dict[str, Any]:
    if not a.command_args and not a.image:
        raise CliError("give the job a command (after --) or an --image", EXIT_USAGE)
    env = {}
    for item in a.env or []:
        name, sep, value = item.partition("=")
        if not sep:
            raise CliError(f"--env takes NAME=VALUE, got {item!r}", EXIT_USAGE)
        env[name] = value
    command = list(a.command_args or [])
    if command and command[0] == "--":
        command = command[1:]
    job: dict[str, Any] = {"command": command, "env": env}
    if a.image:
        job["image"] = a.image
    if a.runtime:
        job["runtime"] = a.runtime
    if a.port:
        job["ports"] = a.port
    if a.volume:
        job["volumes"] = [{"name": name} for name in a.volume]
    if a.ssh_key:
        try:
            with open(os.path.expanduser(a.ssh_key), encoding="utf-8") as key_file:
                job["ssh_public_key"] = key_file.read(8192).strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise CliError(f"cannot read --ssh-key {a.ssh_key}: {exc}", EXIT_USAGE) from None
    elif a.ssh:
        job["ssh"] = True
    body: dict[str, Any] = {"term": TERMS[a.term], "devices_per_node": a.devices, "price_limit": a.max_price,
                            "job": job}  # fmt: skip
    optional = {"offer": a.offer, "node_count": a.nodes, "kind": a.kind, "region": a.region,
                "min_memory_gib": a.min_memory, "software": a.software, "window_start": a.start,
                "window_end": a.end, "min_reliability": a.min_reliability}  # fmt: skip
    body.update({k: v for k, v in optional.items() if v is not None})
    if a.accelerator:
        body["accelerators"] = a.accelerator
    return body


def cmd_order_create(ctx: Context) -> int:
    a = ctx.args
    order = ctx.client.post(
        "/api/v1/orders", _order_body(a), idempotency_key=a.idempotency_key or new_idempotency_key()
    )
    if a.wait:
        order = _wait_for_start(ctx, order)
    ctx.emit(order, lambda: _print_order(order))
    job = (order.get("jobs") or [None])[0]
    if a.wait and job and job["status"] in ENDED_JOB - {"exited"}:
        return EXIT_REFUSED
    return EXIT_OK


def _wait_for_start(ctx: Context, order: dict[str, Any]) -> dict[str, Any]:
    """Poll the order until its first job runs (or ends), showing progress on stderr."""
    progress = Progress()  # stderr: never mixed into the --json output
    deadline = time.monotonic() + ctx.args.timeout
    etag_order = order
    while True:
        jobs = etag_order.get("jobs") or []
        status = etag_order["status"]
        if status in ENDED_ORDER:
            progress.done(
                f"Order {etag_order['id']} {status}: {etag_order.get('status_reason') or ''}".rstrip(": ")
            )
            return etag_order
        if jobs and (jobs[0]["status"] == "running" or jobs[0]["status"] in ENDED_JOB):
            progress.done(f"Job {jobs[0]['id']} is {jobs[0]['status']} on node {jobs[0]['node']}.")
            return etag_order
        if not jobs:
            reasons = etag_order.get("unmatched_reasons") or []
            why = f" ({reasons[0]['code']})" if reasons else ""
            progress.update(f"order {etag_order['id']}: waiting for a match{why}")
        else:
            progress.update(f"job {jobs[0]['id']}: {jobs[0]['status']} (pulling the image, starting)")
        if time.monotonic() > deadline:
            progress.done()
            raise CliError(
                f"order {etag_order['id']} has not started after {ctx.args.timeout:.0f}s; it stays open "
                f"(`suanli order status {etag_order['id']}`, `suanli order cancel {etag_order['id']}`)",
                EXIT_UNAVAILABLE,
            )
        time.sleep(ctx.args.poll)
        etag_order = ctx.client.get(f"/api/v1/orders/{etag_order['id']}")


def _print_order(order: dict[str, Any]) -> None:
    pairs: list[tuple[str, Any]] = [
        ("order", order["id"]), ("term", order["term"]), ("status", order["status"]),
        ("reason", order.get("status_reason") or None),
        ("devices", f"{order['devices_per_node']} x {order['node_count']} node(s)"),
        ("price limit", f"{order['price_limit']} {order['currency']}/device-hour"),
        ("created", order["created_at"]),
    ]  # fmt: skip
    for allocation in order.get("allocations") or []:
        pairs.append(("allocation", f"node {allocation['node']} at {allocation['unit_price']} "
                      f"{allocation['currency']}/device-hour, {allocation['status']}"))  # fmt: skip
    for job in order.get("jobs") or []:
        pairs.append(
            ("job", f"{job['id']} {job['status']} on node {job['node']} devices {job['device_indexes']}")
        )
    for reason in order.get("unmatched_reasons") or []:
        pairs.append(("unmatched", f"{reason['code']} ({reason['nodes']} node(s))"))
    fields(pairs)


def cmd_order_status(ctx: Context) -> int:
    order = ctx.client.get(f"/api/v1/orders/{ctx.args.id}")
    ctx.emit(order, lambda: _print_order(order))
    return EXIT_OK


def cmd_order_cancel(ctx: Context) -> int:
    order = ctx.client.post(f"/api/v1/orders/{ctx.args.id}/cancel")
    ctx.emit(order, lambda: _print_order(order))
    return EXIT_OK


def cmd_order_list(ctx: Context) -> int:
    a = ctx.args
    page = ctx.client.get("/api/v1/orders", status=a.status, limit=a.limit)
    ctx.emit(page, lambda: table(
        [(o["id"], o["term"], o["status"], o["devices_per_node"] * o["node_count"], o["price_limit"],
          ",".join(str(j["id"]) for j in o["jobs"]), o["created_at"]) for o in page["results"]],
        ["order", "term", "status", "devices", "limit", "jobs", "created"],
    ))  # fmt: skip
    return EXIT_OK


# --- Jobs ------------------------------------------------------------------------------------------


def cmd_job_status(ctx: Context) -> int:
    job = ctx.client.get(f"/api/v1/jobs/{ctx.args.id}")
    ctx.emit(job, lambda: fields([
        ("job", job["id"]), ("status", job["status"]), ("node", job["node"]), ("devices", job["device_indexes"]),
        ("started", job["started_at"]), ("ended", job["ended_at"]), ("exit code", job["exit_code"]),
        ("stop reason", job["stop_reason"] or None), ("log bytes", job["log_size"]),
        ("address", job.get("public_address")), *endpoint_rows(job),
    ]))  # fmt: skip
    return EXIT_OK


def cmd_job_ssh(ctx: Context) -> int:
    """Print the job's `ssh` command; with --exec replace this process with it."""
    a = ctx.args
    job = ctx.client.get(f"/api/v1/jobs/{a.id}")
    ssh = job.get("ssh")
    if not ssh:
        raise CliError(
            f"job {a.id} was not launched in SSH mode (order with --ssh or --ssh-key)", EXIT_REFUSED
        )
    if not ssh.get("command"):
        missing = (
            "the node has not reported its public address"
            if not ssh.get("host")
            else f"the job is {job['status']}: its ssh port is not published yet"
        )
        raise CliError(f"no ssh endpoint for job {a.id}: {missing}", EXIT_REFUSED)
    argv = ssh_argv(ssh, identity=a.identity)
    if a.exec:
        sys.stdout.flush()
        try:
            os.execvp(argv[0], argv)  # noqa: S606 - the buyer asked to run ssh
        except OSError as exc:
            raise CliError(f"cannot run ssh: {exc}", EXIT_USAGE) from None
    ctx.emit(ssh, lambda: print(shlex.join(argv)))
    return EXIT_OK


def cmd_job_logs(ctx: Context) -> int:
    """Print the log from --offset; with --follow keep polling until the job ended and all is read."""
    a = ctx.args
    offset = a.offset
    progress = Progress(enabled=a.follow)
    chunks = []
    while True:
        piece = ctx.client.get(f"/api/v1/jobs/{a.id}/logs", offset=offset)
        if piece["data"]:
            progress.done()
            if ctx.as_json:
                chunks.append(piece)
            else:
                sys.stdout.write(piece["data"])
                sys.stdout.flush()
        offset = piece["next_offset"]
        if not a.follow or piece["complete"]:
            break
        if piece["log_size"] <= offset and piece["job_status"] in ("queued", "assigned", "starting"):
            progress.update(f"job {a.id} is {piece['job_status']}: waiting for it to start")
        time.sleep(a.poll)
    progress.done()
    if ctx.as_json:
        json.dump(
            {"job": a.id, "next_offset": offset, "chunks": chunks}, sys.stdout, indent=2, ensure_ascii=False
        )
        sys.stdout.write("\n")
    return EXIT_OK


def cmd_job_stop(ctx: Context) -> int:
    job = ctx.client.post(f"/api/v1/jobs/{ctx.args.id}/stop")
    ctx.emit(job, lambda: print(
        f"Job {job['id']} is {job['status']}: SIGTERM sent"
        + (f", SIGKILL at {job['stop_deadline']}." if job.get("stop_deadline") else ".")
    ))  # fmt: skip
    return EXIT_OK


# --- Spot prices -------------------------------------------------------------------------------------


def cmd_spot_prices(ctx: Context) -> int:
    a = ctx.args
    model, _, region = a.pool.partition("@")
    region = region or a.region
    page = ctx.client.request("GET", "/api/v1/spot-prices", params={"model": model, "region": region,
                                                                    "limit": a.limit}, auth=False)  # fmt: skip
    rows = list(reversed(page["results"]))  # oldest first
    if not ctx.as_json:
        pools = sorted({(r["accelerator"], r["region"]) for r in rows})
        for accelerator, pool_region in pools:
            points = [(r["round_at"][:16].replace("T", " "), r["price"]) for r in rows
                      if (r["accelerator"], r["region"]) == (accelerator, pool_region)]  # fmt: skip
            currency = rows[-1]["currency"]
            last = points[-1][1]
            print(f"{accelerator} in {pool_region}: {last} {currency}/device-hour now, {len(points)} rounds  "
                  f"{sparkline([Decimal(p) for _, p in points])}")  # fmt: skip
            for line in price_chart(points):
                print(line)
        if not pools:
            print(f"No spot rounds for {a.pool} yet.")
    else:
        ctx.emit(page, lambda: None)
    return EXIT_OK


# --- Provider --------------------------------------------------------------------------------------


def cmd_node_list(ctx: Context) -> int:
    page = ctx.client.get("/api/v1/provider/nodes", status=ctx.args.status, limit=ctx.args.limit)
    ctx.emit(page, lambda: table(
        [(n["id"], n["name"], n["status"], n["region"], n["cluster"], len(n["devices"]),
          ",".join(sorted({d["accelerator"] for d in n["devices"]})), n["last_heartbeat_at"]) for n in page["results"]],
        ["node", "name", "status", "region", "cluster", "devices", "model", "last heartbeat"],
    ))  # fmt: skip
    return EXIT_OK


def cmd_node_price(ctx: Context) -> int:
    a = ctx.args
    change = {"on_demand_price": a.on_demand, "reserved_price": a.reserved, "spot_floor": a.spot_floor,
              "listed": a.listed, "pue": a.pue, "volume_price": a.volume_price}  # fmt: skip
    change = {k: v for k, v in change.items() if v is not None}
    if not change:
        raise CliError(
            "give at least one of --on-demand, --reserved, --spot-floor, --volume-price, --list, --unlist, --pue",
            EXIT_USAGE,
        )
    node = ctx.client.patch(f"/api/v1/provider/nodes/{a.id}", change)
    offer = node["offer"] or {}
    ctx.emit(node, lambda: fields([
        ("node", node["id"]), ("name", node["name"]), ("listed", offer.get("listed")),
        ("on-demand", f"{offer.get('on_demand_price')} {offer.get('currency')}/device-hour"),
        ("reserved", f"{offer.get('reserved_price')} {offer.get('currency')}/device-hour"),
        ("spot floor", f"{offer.get('spot_floor')} {offer.get('currency')}/device-hour"),
        ("volumes", f"{offer.get('volume_price')} {offer.get('currency')}/GiB-hour"),
        ("pue", node.get("pue")),
    ]))  # fmt: skip
    return EXIT_OK


def cmd_join_token(ctx: Context) -> int:
    a = ctx.args
    body: dict[str, Any] = {"region": a.region or "", "cluster": a.cluster or ""}
    if a.provider:
        body["provider"] = a.provider
    token = ctx.client.post("/api/v1/provider/join-tokens", body, idempotency_key=new_idempotency_key())
    ctx.emit(token, lambda: print(
        f"Join token (shown once, valid until {token['expires_at']}):\n{token['token']}\n\n"
        f"On the node, run:\n{token['install_command']}"
    ))  # fmt: skip
    return EXIT_OK


# --- Parser ----------------------------------------------------------------------------------------


# --- Spend controls and webhooks --------------------------------------------------------------


def _print_spend_controls(body: dict[str, Any]) -> None:
    cur = body["currency"]
    fields([
        ("monthly cap", f"{body['monthly_cap']} {cur}" if body["monthly_cap"] is not None else "none"),
        ("spent this month", f"{body['spent_this_month']} {cur} (since {body['month_start']})"),
        ("  charged", f"{body['charged_this_month']} {cur}"),
        ("  committed", f"{body['committed']} {cur} (open holds and escrow)"),
        ("low-balance e-mail below",
         f"{body['low_balance_threshold']} {cur}" if body["low_balance_threshold"] is not None else "off"),
    ])  # fmt: skip


def _spend_controls(ctx: Context, change: dict[str, Any] | None) -> int:
    path = "/api/v1/spend-controls"
    body = ctx.client.patch(path, change) if change is not None else ctx.client.get(path)
    ctx.emit(body, lambda: _print_spend_controls(body))
    return EXIT_OK


def cmd_spend_cap(ctx: Context) -> int:
    return _spend_controls(ctx, None)


def cmd_spend_cap_set(ctx: Context) -> int:
    return _spend_controls(ctx, {"monthly_cap": ctx.args.amount})


def cmd_spend_cap_clear(ctx: Context) -> int:
    return _spend_controls(ctx, {"monthly_cap": None})


def cmd_low_balance_set(ctx: Context) -> int:
    return _spend_controls(ctx, {"low_balance_threshold": ctx.args.amount})


def cmd_low_balance_clear(ctx: Context) -> int:
    return _spend_controls(ctx, {"low_balance_threshold": None})


def cmd_webhook_add(ctx: Context) -> int:
    body = {"url": ctx.args.url, "events": ctx.args.event or []}
    endpoint = ctx.client.post("/api/v1/webhooks", body, idempotency_key=new_idempotency_key())
    ctx.emit(endpoint, lambda: print(
        f"Webhook {endpoint['id']} -> {endpoint['url']}\n"
        f"Signing secret (shown only now; store it): {endpoint['secret']}"
    ))  # fmt: skip
    return EXIT_OK


def cmd_webhook_list(ctx: Context) -> int:
    page = ctx.client.get("/api/v1/webhooks")
    ctx.emit(page, lambda: table(
        [(e["id"], e["url"], ",".join(e["events"]) or "all", e["created_at"]) for e in page["results"]],
        ["id", "url", "events", "created"],
    ))  # fmt: skip
    return EXIT_OK


def cmd_webhook_deliveries(ctx: Context) -> int:
    page = ctx.client.get(f"/api/v1/webhooks/{ctx.args.id}/deliveries", limit=ctx.args.limit)
    ctx.emit(page, lambda: table(
        [(d["event_id"], d["event_type"], d["status"], d["attempts"], d["last_status_code"] or "-",
          d["last_error"] or "", d["created_at"]) for d in page["results"]],
        ["event", "type", "status", "attempts", "last code", "last error", "created"],
    ))  # fmt: skip
    return EXIT_OK


def cmd_webhook_remove(ctx: Context) -> int:
    ctx.client.request("DELETE", f"/api/v1/webhooks/{ctx.args.id}")
    ctx.emit({"id": ctx.args.id, "deleted": True}, lambda: print(f"Webhook {ctx.args.id} removed."))
    return EXIT_OK


def _print_volume(v: dict[str, Any]) -> None:
    fields([
        ("volume", v["id"]), ("name", v["name"]), ("node", v["node"]), ("size", f"{v['size_gib']} GiB"),
        ("price", f"{v['price']} {v['currency']}/GiB-hour"), ("status", v["status"]), ("mount", v["mount"]),
        ("charged", f"{v['charged']} {v['currency']}"),
    ])  # fmt: skip


def cmd_volume_create(ctx: Context) -> int:
    a = ctx.args
    body = {"node": a.node, "name": a.name, "size_gib": a.size}
    key = a.idempotency_key or new_idempotency_key()
    volume = ctx.client.post("/api/v1/volumes", body, idempotency_key=key)
    ctx.emit(volume, lambda: _print_volume(volume))
    return EXIT_OK


def cmd_volume_list(ctx: Context) -> int:
    page = ctx.client.get("/api/v1/volumes", all="true" if ctx.args.all else None, limit=ctx.args.limit)
    ctx.emit(page, lambda: table(
        [(v["id"], v["name"], v["node"], v["size_gib"], f"{v['price']} {v['currency']}", v["status"], v["mount"])
         for v in page["results"]],
        ["volume", "name", "node", "GiB", "per GiB-hour", "status", "mount"],
    ))  # fmt: skip
    return EXIT_OK


def cmd_volume_show(ctx: Context) -> int:
    volume = ctx.client.get(f"/api/v1/volumes/{ctx.args.id}")
    ctx.emit(volume, lambda: _print_volume(volume))
    return EXIT_OK


def cmd_volume_delete(ctx: Context) -> int:
    volume = ctx.client.request("DELETE", f"/api/v1/volumes/{ctx.args.id}")
    ctx.emit(volume, lambda: print(f"Volume {ctx.args.id} deleted; billing stopped."))
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--json", action="store_true", default=argparse.SUPPRESS,
                        help="print the API's JSON instead of a table")  # fmt: skip
    common.add_argument(
        "--server", default=argparse.SUPPRESS, help="server URL (default: from `suanli login`)"
    )
    common.add_argument("--key", default=argparse.SUPPRESS, help="API key (default: from `suanli login`)")

    parser = argparse.ArgumentParser(
        prog="suanli", description="Rent and provide compute on Suanli Exchange.", parents=[common],
        epilog=EXIT_CODES + f"\nconfig: {config_path()} (or $SUANLI_CONFIG)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    parser.add_argument("--version", action="version", version=f"suanli {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    def command(name: str, handler: Callable[[Context], int], help_text: str, parent: Any = sub) -> Any:
        p = parent.add_parser(name, help=help_text, description=help_text, parents=[common])
        p.set_defaults(handler=handler)
        return p

    command("login", cmd_login, "check an API key (--server URL --key KEY) and store both (mode 0600)")

    p = command("offers", cmd_offers, "find offers of free capacity, cheapest first")
    p.add_argument("--kind", choices=["gpu", "npu", "mlu", "dcu", "gaudi", "fpga", "cpu"])
    p.add_argument("--vendor")
    p.add_argument("--model", help="e.g. H100, MI300X, 910B")
    p.add_argument("--min-memory", type=int, metavar="GIB", help="device memory at least")
    p.add_argument("--region", help="e.g. cn-east")
    p.add_argument(
        "--term", choices=list(TERMS), default="on-demand", help="which price to filter and sort by"
    )
    p.add_argument("--max-price", metavar="AMOUNT", help="per device-hour, e.g. 2.50")
    p.add_argument("--min-reliability", metavar="SCORE", help="0 to 1")
    p.add_argument("--devices", type=int, help="at least this many free devices on one node")
    p.add_argument("--sort", choices=["price", "price_per_pflop", "reliability", "carbon"])
    p.add_argument("--limit", type=int, default=20)

    order = sub.add_parser("order", help="create, follow and cancel orders").add_subparsers(
        dest="order_command", metavar="COMMAND", required=True
    )
    p = command("create", cmd_order_create, "place an order with its job: suanli order create ... -- CMD ARGS",
                order)  # fmt: skip
    p.add_argument("--term", choices=list(TERMS), required=True)
    p.add_argument("--devices", type=int, required=True, help="devices per node")
    p.add_argument("--nodes", type=int, help="node count (a gang in one cluster)")
    p.add_argument("--offer", type=int, help="a specific offer (from `suanli offers`)")
    p.add_argument("--max-price", required=True, metavar="AMOUNT",
                   help="price limit per device-hour (the spot bid for spot)")  # fmt: skip
    p.add_argument("--accelerator", type=int, action="append", help="accelerator model id (repeatable)")
    p.add_argument("--kind", choices=["gpu", "npu", "mlu", "dcu", "gaudi", "fpga", "cpu"])
    p.add_argument("--region")
    p.add_argument("--min-memory", type=int, metavar="GIB")
    p.add_argument("--min-reliability", metavar="SCORE")
    p.add_argument("--software", help="e.g. 'cuda>=12.1'")
    p.add_argument("--start", help="reserved: window start, ISO 8601 (2026-03-02T09:00:00Z)")
    p.add_argument("--end", help="reserved: window end, ISO 8601")
    p.add_argument("--image", help="container image (docker runtime)")
    p.add_argument("--runtime", choices=["docker", "process"])
    p.add_argument("--env", action="append", metavar="NAME=VALUE")
    p.add_argument("--port", type=int, action="append")
    p.add_argument("--volume", action="append", metavar="NAME",
                   help="mount your volume NAME at /volumes/NAME (repeatable; the job runs on its node)")  # fmt: skip
    ssh_mode = p.add_mutually_exclusive_group()
    ssh_mode.add_argument("--ssh", action="store_true", help="SSH mode with the public key of your profile")
    ssh_mode.add_argument(
        "--ssh-key", metavar="FILE", help="SSH mode with this public key file (~/.ssh/id_ed25519.pub)"
    )
    p.add_argument("--idempotency-key", help="default: a fresh random key")
    p.add_argument("--wait", action="store_true", help="wait (with progress) until the job runs")
    p.add_argument("--timeout", type=float, default=600.0, help="seconds --wait waits (default 600)")
    p.add_argument("--poll", type=float, default=1.0, help=argparse.SUPPRESS)
    p.add_argument("command_args", nargs=argparse.REMAINDER, metavar="-- CMD ARGS")
    p = command(
        "status", cmd_order_status, "an order with its allocations, jobs and unmatched reasons", order
    )
    p.add_argument("id", type=int)
    p = command("cancel", cmd_order_cancel, "cancel an order (stops its jobs)", order)
    p.add_argument("id", type=int)
    p = command("list", cmd_order_list, "your orders, newest first", order)
    p.add_argument("--status")
    p.add_argument("--limit", type=int, default=20)

    job = sub.add_parser("job", help="follow and stop jobs").add_subparsers(
        dest="job_command", metavar="COMMAND", required=True
    )
    p = command("status", cmd_job_status, "a job's state", job)
    p.add_argument("id", type=int)
    p = command("logs", cmd_job_logs, "print a job's log", job)
    p.add_argument("id", type=int)
    p.add_argument("--offset", type=int, default=0, help="start at this byte")
    p.add_argument("--follow", "-f", action="store_true", help="keep printing until the job has ended")
    p.add_argument("--poll", type=float, default=1.0, help=argparse.SUPPRESS)
    p = command("stop", cmd_job_stop, "stop a job (SIGTERM, then SIGKILL after 30 s)", job)
    p.add_argument("id", type=int)
    p = command("show", cmd_job_status, "a job's state and where to reach it (host:port)", job)
    p.add_argument("id", type=int)
    p = command("ssh", cmd_job_ssh, "print the ssh command for a job launched in SSH mode", job)
    p.add_argument("id", type=int)
    p.add_argument("--exec", action="store_true", help="run ssh now instead of printing the command")
    p.add_argument("-i", "--identity", metavar="FILE", help="private key file to pass to ssh (-i)")

    p = command("wallet", cmd_wallet, "balance, held, reserved and available")
    wallet = p.add_subparsers(dest="wallet_command", metavar="COMMAND")
    p = command("top-up", cmd_top_up, "start a top-up; prints the checkout URL to pay at", wallet)
    p.add_argument("amount", help="e.g. 50.00")

    p = command("usage", cmd_usage, "what your jobs cost: rate, charged, owed")
    p.add_argument("--job", type=int)
    p.add_argument("--status", choices=["open", "paused", "closed"])
    p.add_argument("--limit", type=int, default=20)

    p = command("spot-prices", cmd_spot_prices, "spot clearing prices of a pool, as a chart")
    p.add_argument("pool", help="MODEL or MODEL@REGION, e.g. H100@cn-east")
    p.add_argument("--region")
    p.add_argument("--limit", type=int, default=120, help="rounds (default 120)")

    node = sub.add_parser("node", help="providers: your nodes and their prices").add_subparsers(
        dest="node_command", metavar="COMMAND", required=True
    )
    p = command("list", cmd_node_list, "your providers' nodes", node)
    p.add_argument("--status")
    p.add_argument("--limit", type=int, default=50)
    p = command("price", cmd_node_price, "set a node's prices, listing and PUE", node)
    p.add_argument("id", type=int)
    p.add_argument("--on-demand", metavar="AMOUNT")
    p.add_argument("--reserved", metavar="AMOUNT")
    p.add_argument("--spot-floor", metavar="AMOUNT")
    listing = p.add_mutually_exclusive_group()
    listing.add_argument("--list", dest="listed", action="store_const", const=True)
    listing.add_argument("--unlist", dest="listed", action="store_const", const=False)
    p.add_argument("--pue", metavar="PUE", help="the site's power usage effectiveness, 1.00 to 3.00")
    p.add_argument("--volume-price", metavar="AMOUNT", help="persistent volumes per GiB-hour (0: none)")

    p = command("join-token", cmd_join_token, "providers: a one-time token and install command for a node")
    p.add_argument("--region")
    p.add_argument("--cluster")
    p.add_argument("--provider", type=int, help="when you belong to several providers")

    p = command("spend-cap", cmd_spend_cap, "your monthly spend cap and what you spent this month")
    spend = p.add_subparsers(dest="spend_command", metavar="COMMAND")
    p = command("set", cmd_spend_cap_set, "refuse orders that would take this month's spending past AMOUNT",
                spend)  # fmt: skip
    p.add_argument("amount", help="e.g. 500.00")
    command("clear", cmd_spend_cap_clear, "remove the cap", spend)
    low = sub.add_parser("low-balance", help="e-mail when your available balance falls below an amount")
    low_sub = low.add_subparsers(dest="low_balance_command", metavar="COMMAND", required=True)
    p = command(
        "set", cmd_low_balance_set, "e-mail once when the available balance falls below AMOUNT", low_sub
    )
    p.add_argument("amount", help="e.g. 100.00")
    command("clear", cmd_low_balance_clear, "no low-balance e-mail", low_sub)

    hook = sub.add_parser("webhook", help="signed job events posted to your URL").add_subparsers(
        dest="webhook_command", metavar="COMMAND", required=True
    )
    p = command("add", cmd_webhook_add, "register a URL; prints its signing secret once", hook)
    p.add_argument("url")
    p.add_argument("--event", action="append",
                   choices=["job.started", "job.ended", "job.preempted", "job.stopped_for_funds"],
                   help="only this event type (repeatable; default: all)")  # fmt: skip
    command("list", cmd_webhook_list, "your webhook endpoints", hook)
    p = command("deliveries", cmd_webhook_deliveries, "an endpoint's delivery log, newest first", hook)
    p.add_argument("id", type=int)
    p.add_argument("--limit", type=int, default=20)
    p = command("remove", cmd_webhook_remove, "stop sending events to an endpoint", hook)
    p.add_argument("id", type=int)

    volume = sub.add_parser("volume", help="persistent volumes on a node, mounted by jobs").add_subparsers(
        dest="volume_command", metavar="COMMAND", required=True
    )
    p = command("create", cmd_volume_create, "create a volume on a node (billed per GiB-hour until deleted)",
                volume)  # fmt: skip
    p.add_argument("--node", type=int, required=True, help="the node (an offer's node id)")
    p.add_argument("--name", required=True, help="a-z, 0-9, - and _; jobs see it at /volumes/NAME")
    p.add_argument("--size", type=int, required=True, metavar="GIB")
    p.add_argument("--idempotency-key", help="default: a fresh random key")
    p = command("list", cmd_volume_list, "your volumes", volume)
    p.add_argument("--all", action="store_true", help="include deleted volumes")
    p.add_argument("--limit", type=int, default=50)
    p = command("show", cmd_volume_show, "one volume", volume)
    p.add_argument("id", type=int)
    p = command("delete", cmd_volume_delete, "delete a volume and its data (refused while a job mounts it)",
                volume)  # fmt: skip
    p.add_argument("id", type=int)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse: --help (0) or a usage error (2)
        return int(exc.code or 0)
    for name in ("server", "key"):
        if not hasattr(args, name):
            setattr(args, name, None)
    handler = getattr(args, "handler", None)
    if handler is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    try:
        return int(handler(Context(args)))
    except CliError as exc:
        sys.stderr.write(f"suanli: {exc.message}\n")
        return exc.exit_code
    except KeyboardInterrupt:
        sys.stderr.write("suanli: interrupted\n")
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        return EXIT_OK
    except Exception as exc:  # noqa: BLE001 - one clear line, never a traceback
        sys.stderr.write(f"suanli: unexpected {type(exc).__name__}: {exc}\n")
        return EXIT_UNAVAILABLE


if __name__ == "__main__":
    sys.exit(main())
