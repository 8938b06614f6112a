"""The `process` runtime: the job is a local process group writing to a log file.

The child writes straight into the log file (no pipe through the agent), so it outlives an
agent restart; the pid and its create_time identify it afterwards (a recycled pid has another
create_time). A tiny /bin/sh wrapper records the exit status in a file, because a re-attached
process is no longer our child and its status cannot be waited for.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
from pathlib import Path

import psutil

from providers.agent.jobs import JobRecord
from providers.agent.runtimes.base import StartError, Status, device_env
from providers.agent.runtimes.ssh import SSH_PORT_KEY, process_ssh_prepare
from providers.agent.state import StateDir
from providers.agent.volumes import VolumeError, job_mounts, process_links

log = logging.getLogger("suanli_agent.runtime.process")

# `trap :` (not `trap ''`) so the command itself keeps default signal handling: the shell
# outlives a SIGTERM to the group just long enough to record the command's status.
WRAPPER = (
    'f="$1"; shift; trap : TERM INT HUP; "$@"; c=$?; printf %s "$c" > "$f.tmp" && mv "$f.tmp" "$f"; exit "$c"'
)


def _job_environment(rec: JobRecord) -> dict[str, str]:
    # The agent's own settings stay private; vendor variables (LD_LIBRARY_PATH, ASCEND_*) pass.
    env = {k: v for k, v in os.environ.items() if not k.startswith("SUANLI_AGENT")}
    env.update({str(k): str(v) for k, v in (rec.spec.get("env") or {}).items()})
    env.update(device_env(rec.spec.get("vendor"), rec.device_indexes))
    env["SUANLI_JOB_ID"] = str(rec.id)
    return env


class ProcessRuntime:
    name = "process"

    def __init__(self, state: StateDir, *, public_address: str = "") -> None:
        self.state = state
        # Shown in an SSH-mode job's connection line.
        self.public_address = public_address
        self._children: dict[int, subprocess.Popen[bytes]] = {}

    def exit_file(self, rec: JobRecord) -> Path:
        return self.state.run_dir / f"job-{rec.id}.exit"

    def start(self, rec: JobRecord) -> None:
        command = rec.spec.get("command") or []
        if not command or not all(isinstance(c, str) for c in command):
            raise StartError("command must be a non-empty list of strings")
        workdir = self.state.root / "work" / f"job-{rec.id}"
        workdir.mkdir(parents=True, exist_ok=True, mode=0o700)
        try:
            # The daemon created the volumes (volumes_prepare); here they become reachable.
            volume_env = process_links(workdir, job_mounts(self.state.root, rec.spec))
        except (VolumeError, OSError) as exc:
            raise StartError(f"cannot mount volumes: {exc}") from exc
        try:
            ssh_env = process_ssh_prepare(self.state, rec, public_address=self.public_address)
        except OSError as exc:
            raise StartError(f"cannot set up ssh: {exc}") from exc
        exit_file = self.exit_file(rec)
        with contextlib.suppress(FileNotFoundError):
            exit_file.unlink()
        log_fd = os.open(self.state.job_log_path(rec.id), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            proc = subprocess.Popen(
                ["/bin/sh", "-c", WRAPPER, "suanli-job", str(exit_file), *command],
                stdin=subprocess.DEVNULL,
                stdout=log_fd,
                stderr=subprocess.STDOUT,
                cwd=workdir,
                env={**_job_environment(rec), **volume_env, **ssh_env},
                start_new_session=True,  # own process group: signals reach the whole job
            )
        except OSError as exc:
            raise StartError(f"cannot start job: {exc}") from exc
        finally:
            os.close(log_fd)
        self._children[rec.id] = proc
        rec.pid = proc.pid
        try:
            rec.create_time = psutil.Process(proc.pid).create_time()
        except psutil.Error:
            rec.create_time = None
        # A host process binds host ports directly: container port == host port.
        rec.ports = {f"{int(p)}/tcp": int(p) for p in rec.spec.get("ports") or []}
        if ssh_env:
            rec.ports[SSH_PORT_KEY] = int(ssh_env["SUANLI_SSH_PORT"])
        log.info("job.started job_id=%s pid=%s", rec.id, proc.pid)

    def _read_exit_file(self, rec: JobRecord) -> int | None:
        try:
            return int(self.exit_file(rec).read_text().strip())
        except (OSError, ValueError):
            return None

    def _same_process(self, rec: JobRecord) -> psutil.Process | None:
        if rec.pid is None:
            return None
        try:
            proc = psutil.Process(rec.pid)
            if rec.create_time is not None and abs(proc.create_time() - rec.create_time) > 0.01:
                return None  # the pid was recycled by an unrelated process
            return proc
        except psutil.Error:
            return None

    def poll(self, rec: JobRecord) -> Status:
        child = self._children.get(rec.id)
        if child is not None:
            code = child.poll()
            if code is None:
                return Status(running=True)
            self._children.pop(rec.id, None)
            recorded = self._read_exit_file(rec)
            if recorded is not None:
                return Status(running=False, exit_code=recorded)
            # The wrapper itself was killed (SIGKILL): report the signal the shell's way.
            return Status(running=False, exit_code=128 - code if code < 0 else code)
        proc = self._same_process(rec)
        if proc is not None:
            try:
                zombie = proc.status() == psutil.STATUS_ZOMBIE
            except psutil.Error:
                zombie = False
            if not zombie:
                return Status(running=True)
            # Still our child from before a (simulated) restart: reap it for its status.
            with contextlib.suppress(ChildProcessError, OSError):
                os.waitpid(proc.pid, os.WNOHANG)
        recorded = self._read_exit_file(rec)
        if recorded is not None:
            return Status(running=False, exit_code=recorded)
        return Status(running=False, exit_code=None, known=False)

    def _signal(self, rec: JobRecord, sig: signal.Signals) -> None:
        # Never signal a pid we cannot vouch for: pid None would mean killpg(0), our own group.
        if rec.pid is None or (rec.id not in self._children and self._same_process(rec) is None):
            return
        try:
            os.killpg(rec.pid, sig)
            log.info("job.signal job_id=%s signal=%s", rec.id, sig.name)
        except (ProcessLookupError, PermissionError) as exc:
            log.info("job.signal_failed job_id=%s signal=%s error=%s", rec.id, sig.name, exc)

    def terminate(self, rec: JobRecord) -> None:
        self._signal(rec, signal.SIGTERM)

    def kill(self, rec: JobRecord) -> None:
        self._signal(rec, signal.SIGKILL)

    def sync_logs(self, rec: JobRecord) -> None:
        return None
