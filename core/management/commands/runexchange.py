"""`make run`: the whole exchange in one terminal.

Migrates, loads the catalog and demo data, then supervises gunicorn, a Celery worker, Celery beat
and the simulated provider agents. Ctrl-C (SIGINT) or SIGTERM stops every child, then the embedded
PostgreSQL and Redis when this run is using them. Data persists under ``var/`` between runs.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import OperationalError

from config import embedded
from config.env import database_url_for


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
        self.children: list[tuple[str, subprocess.Popen[bytes]]] = []
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
                self.children += agents
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
                for name, process in self.children:
                    code = process.poll()
                    if code is not None and name in {"web", "worker", "beat"}:
                        self.stderr.write(f"{name} exited with {code}; stopping (see {log_dir}/{name}.log)")
                        self.stopping = True
                        break
                time.sleep(0.5)
        finally:
            self._stop_children()
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
        log = (Path(settings.VAR_DIR) / "log" / f"{name}.log").open("ab")
        # Own process group: a terminal Ctrl-C reaches only this supervisor, which then stops
        # the children in order instead of every process racing to exit.
        process = subprocess.Popen(
            argv, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        self.children.append((name, process))

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
            time.sleep(0.5)

    def _stop_children(self) -> None:
        # Agents first (they talk to web), then web and beat, the worker last so it can finish
        # the task in hand (acks_late requeues anything it cannot).
        order = sorted(self.children, key=lambda item: {"worker": 2, "web": 1, "beat": 1}.get(item[0], 0))
        for _name, process in order:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + 20
        for _name, process in order:
            try:
                process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
