"""`make run`: the whole exchange in one terminal.

Migrates, loads the catalog and demo data, then supervises gunicorn, a Celery worker, Celery beat
and the simulated provider agents. Ctrl-C (SIGINT) or SIGTERM stops every child, then the embedded
PostgreSQL and Redis when this run is using them. Data persists under ``var/`` between runs.

Only Ctrl-C or SIGTERM stops the exchange. A child that dies (a worker killed by the OOM killer or
``kill -9``) is restarted after a short, growing delay, each death and restart logged on stderr.
A child that keeps dying within seconds of starting (``MAX_FAST_DEATHS`` times in a row: a bad
setting, a port in use) is given up on, with a log line saying so; the other children keep
running, so the portal, logs and ``/healthz`` stay available to show what is wrong. The one
exception is start-up: a web server that never came up ends the command with an error.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import OperationalError

from config import embedded
from config.env import database_url_for

# A death this soon after a start counts as "fast"; this many fast deaths in a row and the child
# is given up on. The delay before a restart doubles with each fast death, from BASE up to CAP.
FAST_DEATH_S = 10.0
MAX_FAST_DEATHS = 5
RESTART_BASE_S = 1.0
RESTART_CAP_S = 30.0
# Stop order: agents first (they talk to web), then web and beat, the worker last so it can finish
# the task in hand (acks_late requeues anything it cannot).
STOP_ORDER = {"worker": 2, "web": 1, "beat": 1}


@dataclass
class Child:
    name: str
    argv: list[str]
    env: dict[str, str]
    log_path: Path
    process: subprocess.Popen[bytes]
    started_at: float
    starts: int = 1
    fast_deaths: int = 0
    restart_at: float | None = None
    gave_up: bool = False
    exit_codes: list[int] = field(default_factory=list)


def _describe_exit(code: int) -> str:
    if code < 0:
        try:
            return f"{code} (killed by {signal.Signals(-code).name})"
        except ValueError:
            return str(code)
    return str(code)


class Supervisor:
    """Start children in their own process groups, restart the ones that die, stop them in order.

    ``poll()`` is called from the command's main loop; it never blocks. Restarting is decided per
    child: after a death the child waits ``base * 2^(fast deaths - 1)`` seconds (capped) before it
    starts again; after ``max_fast_deaths`` deaths in a row each within ``fast_death_s`` of its
    start, it is left stopped and the rest carry on. A child that ran longer resets its count.
    """

    def __init__(
        self,
        *,
        log: Callable[[str], None],
        fast_death_s: float = FAST_DEATH_S,
        max_fast_deaths: int = MAX_FAST_DEATHS,
        restart_base_s: float = RESTART_BASE_S,
        restart_cap_s: float = RESTART_CAP_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.log = log
        self.fast_death_s = fast_death_s
        self.max_fast_deaths = max_fast_deaths
        self.restart_base_s = restart_base_s
        self.restart_cap_s = restart_cap_s
        self.clock = clock
        self.children: list[Child] = []
        self.stopping = False

    def spawn(self, name: str, argv: list[str], env: dict[str, str], log_path: Path) -> Child:
        child = Child(name, list(argv), env, log_path, self._start(argv, env, log_path), self.clock())
        self.children.append(child)
        return child

    def adopt(
        self, name: str, process: subprocess.Popen[bytes], env: dict[str, str], log_path: Path
    ) -> Child:
        """Supervise a process started elsewhere (its own session, argv a list), e.g. demo agents."""
        args = process.args
        argv = [str(arg) for arg in args] if isinstance(args, list | tuple) else [str(args)]
        child = Child(name, argv, env, log_path, process, self.clock())
        self.children.append(child)
        return child

    def child(self, name: str) -> Child | None:
        return next((child for child in self.children if child.name == name), None)

    @staticmethod
    def _start(argv: list[str], env: dict[str, str], log_path: Path) -> subprocess.Popen[bytes]:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with log_path.open("ab") as log_file:
            # Own process group: a terminal Ctrl-C reaches only this supervisor, which then stops
            # the children in order instead of every process racing to exit. The child keeps its
            # own copy of the log file descriptor.
            return subprocess.Popen(
                argv, env=env, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True
            )

    def poll(self) -> None:
        """Notice deaths, schedule restarts, start the children whose delay has passed."""
        if self.stopping:
            return
        for child in self.children:
            if child.gave_up:
                continue
            now = self.clock()
            if child.restart_at is None:
                code = child.process.poll()
                if code is not None:
                    self._died(child, code, now)
            elif now >= child.restart_at:
                child.process = self._start(child.argv, child.env, child.log_path)
                child.started_at = now
                child.starts += 1
                child.restart_at = None
                self.log(f"{child.name} restarted (pid {child.process.pid})")

    def _died(self, child: Child, code: int, now: float) -> None:
        child.exit_codes.append(code)
        # The dead leader's own children (gunicorn workers holding the port, Celery pool
        # processes holding tasks) would otherwise linger and fight the restarted one.
        self._kill_group(child.process.pid, signal.SIGKILL)
        ran = now - child.started_at
        child.fast_deaths = child.fast_deaths + 1 if ran < self.fast_death_s else 0
        where = f"see {child.log_path}"
        if child.fast_deaths >= self.max_fast_deaths:
            child.gave_up = True
            self.log(
                f"{child.name} exited with {_describe_exit(code)}; it died {child.fast_deaths} times in a "
                f"row within {self.fast_death_s:g} s of starting, so it is not restarted again. The "
                f"rest of the exchange keeps running; fix the cause ({where}) and restart make run."
            )
            return
        delay = min(self.restart_cap_s, self.restart_base_s * 2 ** max(child.fast_deaths - 1, 0))
        child.restart_at = now + delay
        self.log(
            f"{child.name} exited with {_describe_exit(code)} after {ran:.1f} s; "
            f"restarting in {delay:g} s ({where})"
        )

    @staticmethod
    def _kill_group(pgid: int, sig: signal.Signals) -> None:
        try:
            os.killpg(pgid, sig)
        except (ProcessLookupError, PermissionError):
            pass

    def stop(self, timeout: float = 20.0) -> None:
        """SIGTERM every child's group in ``STOP_ORDER``, SIGKILL what is left after ``timeout``."""
        self.stopping = True
        order = sorted(self.children, key=lambda child: STOP_ORDER.get(child.name, 0))
        for child in order:
            if child.process.poll() is None:
                self._kill_group(child.process.pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for child in order:
            try:
                child.process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                self._kill_group(child.process.pid, signal.SIGKILL)
                child.process.wait()


class Command(BaseCommand):
    help = "Run web, worker, beat and simulated agents against PostgreSQL and Redis."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--port", type=int, default=int(os.environ.get("SUANLI_PORT", "8000")))
        parser.add_argument("--host", default=os.environ.get("SUANLI_HOST", "127.0.0.1"))
        parser.add_argument("--no-agents", action="store_true", help="do not start simulated agents")
        parser.add_argument(
            "--keep-services", action="store_true", help="leave embedded PostgreSQL/Redis running on exit"
        )

    def handle(self, *args: Any, **options: Any) -> None:
        self.supervisor = Supervisor(log=self.stderr.write)
        self.stopping = False
        embedded_db = not os.environ.get("DATABASE_URL")
        embedded_redis = not os.environ.get("REDIS_URL")

        try:
            call_command("migrate", interactive=False, verbosity=0)
        except OperationalError as exc:
            # A wrong DATABASE_URL (no server, no such database, refused login): one line, not a
            # traceback; nothing has been started yet.
            reason = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
            raise CommandError(f"cannot use the database: {reason}") from exc
        call_command("loadcatalog")
        call_command("seeddemo")

        env = dict(os.environ)
        env.update(
            DATABASE_URL=database_url_for(settings.DATABASES["default"]),
            REDIS_URL=str(settings.REDIS_URL),
            PYTHONUNBUFFERED="1",
        )
        log_dir = Path(settings.VAR_DIR) / "log"
        log_dir.mkdir(parents=True, exist_ok=True)
        bind = f"{options['host']}:{options['port']}"
        site_url = f"http://{'127.0.0.1' if options['host'] in {'0.0.0.0', '::'} else options['host']}:{options['port']}"  # noqa: S104
        env.setdefault("SUANLI_SITE_URL", site_url)
        python = sys.executable

        # Everything after the first child starts runs under try/finally: a failure anywhere in
        # start-up still stops every process this supervisor started.
        try:
            self._spawn("web", [python, "-m", "gunicorn", "config.wsgi", "-b", bind, "-w", "2",
                                "--threads", "8", "--access-logfile", "-", "--graceful-timeout", "10"], env)  # fmt: skip
            self._spawn("worker", [python, "-m", "celery", "-A", "config.celery_app", "worker",
                                   "-Q", "matching,provisioning,billing,default", "-c", "2",
                                   "-n", "worker@%h", "-l", "info"], env)  # fmt: skip
            self._spawn("beat", [python, "-m", "celery", "-A", "config.celery_app", "beat", "-l", "info",
                                 "--schedule", str(Path(settings.VAR_DIR) / "celerybeat-schedule")], env)  # fmt: skip

            signal.signal(signal.SIGINT, self._request_stop)
            signal.signal(signal.SIGTERM, self._request_stop)

            self._wait_healthy(site_url)
            if not options["no_agents"] and not self.stopping:
                from marketplace.management.commands.seeddemo import demo_market, start_demo_agents

                agents = start_demo_agents(server_url=site_url, env=env, var_dir=Path(settings.VAR_DIR))
                for name, process in agents:
                    self.supervisor.adopt(name, process, env, log_dir / f"{name}.log")
                self.stdout.write(
                    f"started {len(agents)} simulated provider agents; waiting for them to come online"
                )
                self._demo(demo_market)
            self.stdout.write(self.style.SUCCESS(f"\nSuanli Exchange is running at {site_url}/"))
            self.stdout.write("  demo buyer:    buyer@demo.suanli / demo-buyer-pass")
            self.stdout.write("  demo provider: provider@demo.suanli / demo-provider-pass")
            self.stdout.write("  operator:      admin / demo-admin-pass  (Django admin at /admin/)")
            self.stdout.write(f"  logs:          {log_dir}/\nPress Ctrl-C to stop.\n")

            next_demo_check = time.monotonic() + 30
            while not self.stopping:
                if not options["no_agents"] and time.monotonic() > next_demo_check:
                    from marketplace.management.commands.seeddemo import demo_order

                    self._demo(demo_order)  # the demo buyer always has a job to watch
                    next_demo_check = time.monotonic() + 30
                # A dead child is restarted, never a reason to stop: only Ctrl-C/SIGTERM stop.
                self.supervisor.poll()
                time.sleep(0.5)
        finally:
            self.supervisor.stop()
            if not options["no_agents"]:
                from marketplace.management.commands.seeddemo import stop_demo_jobs

                stop_demo_jobs(var_dir=Path(settings.VAR_DIR))
            if not options["keep_services"]:
                if embedded_redis:
                    embedded.redis_stop(Path(settings.VAR_DIR))
                if embedded_db:
                    from django.db import connections

                    connections.close_all()
                    embedded.postgres_stop(Path(settings.VAR_DIR))
            self.stdout.write("stopped cleanly")

    def _demo(self, step: Any) -> None:
        """Demo set-up is a convenience: a failure there is reported, never fatal."""
        try:
            result = step()
            if result:
                self.stdout.write(str(result))
        except Exception as exc:  # noqa: BLE001
            self.stderr.write(f"demo set-up step {step.__name__} failed: {exc}")

    def _spawn(self, name: str, argv: list[str], env: dict[str, str]) -> None:
        self.supervisor.spawn(name, argv, env, Path(settings.VAR_DIR) / "log" / f"{name}.log")

    def _request_stop(self, signum: int, frame: object) -> None:
        self.stopping = True

    def _wait_healthy(self, site_url: str, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not self.stopping:
            try:
                with urllib.request.urlopen(f"{site_url}/healthz", timeout=5) as response:  # noqa: S310
                    if response.status == 200:
                        return
            except Exception:  # noqa: BLE001, S110 - not up yet
                pass
            self.supervisor.poll()  # a web that dies while starting is restarted, not waited on
            web = self.supervisor.child("web")
            if web is not None and web.gave_up:
                # Never up at all (a port in use, a bad setting): a start-up failure, not an
                # outage to ride out; the finally block stops what did start.
                raise CommandError(f"web could not start; see {web.log_path}")
            time.sleep(0.5)
