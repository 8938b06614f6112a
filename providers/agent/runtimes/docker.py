"""The `docker` runtime: one locked-down container per job, named `suanli-job-<id>`.

The docker SDK is imported lazily, only here, so nodes without Docker never load it. The
deterministic name is how a restarted agent finds its containers again.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from providers.agent.jobs import JobRecord
from providers.agent.runtimes.base import StartError, Status, device_env
from providers.agent.runtimes.ssh import docker_ssh_apply
from providers.agent.state import StateDir
from providers.agent.volumes import Mount, VolumeError, docker_binds, job_mounts

log = logging.getLogger("suanli_agent.runtime.docker")

ASCEND_CONTROL = ("/dev/davinci_manager", "/dev/devmm_svm", "/dev/hisi_hdc")


def container_name(job_id: int) -> str:
    return f"suanli-job-{job_id}"


def _dev(path: str) -> str:
    return f"{path}:{path}:rwm"


def device_options(vendor: str | None, indexes: list[int]) -> dict[str, Any]:
    """Vendor-specific device exposure, as docker SDK `containers.run` keyword arguments."""
    if not indexes:
        return {}
    if vendor == "nvidia":
        from docker.types import DeviceRequest

        ids = [str(i) for i in indexes]
        return {"device_requests": [DeviceRequest(device_ids=ids, capabilities=[["gpu"]])]}
    if vendor == "huawei":
        return {"devices": [_dev(f"/dev/davinci{i}") for i in indexes] + [_dev(p) for p in ASCEND_CONTROL]}
    if vendor == "cambricon":
        return {"devices": [_dev(f"/dev/cambricon_dev{i}") for i in indexes] + [_dev("/dev/cambricon_ctl")]}
    if vendor in ("amd", "hygon"):
        # ROCm/DTK containers see every GPU through /dev/kfd and /dev/dri; HIP_VISIBLE_DEVICES
        # narrows it to the allocation.
        return {"devices": [_dev("/dev/kfd"), _dev("/dev/dri")], "group_add": ["video"]}
    if vendor == "intel":
        return {"devices": [_dev(f"/dev/accel/accel{i}") for i in indexes]}
    return {}


def run_kwargs(rec: JobRecord, mounts: list[Mount] | None = None) -> dict[str, Any]:
    spec = rec.spec
    image = spec.get("image")
    if not image:
        raise StartError("docker job has no image")
    env = {str(k): str(v) for k, v in (spec.get("env") or {}).items()}
    env.update(device_env(spec.get("vendor"), rec.device_indexes))
    env["SUANLI_JOB_ID"] = str(rec.id)
    kwargs: dict[str, Any] = {
        "image": image,
        "command": spec.get("command") or None,
        "name": container_name(rec.id),
        "detach": True,
        "environment": env,
        "labels": {"suanli.job": str(rec.id)},
        # Each listed port is published on an ephemeral host port, reported back afterwards.
        "ports": {f"{int(p)}/tcp": None for p in spec.get("ports") or []},
        "privileged": False,
        "security_opt": ["no-new-privileges"],
        "cap_drop": ["ALL"],
        # Only the job's persistent volumes, each at /volumes/<name>: never a path the buyer chose.
        "volumes": docker_binds(mounts or []),
    }
    if spec.get("memory_mib"):
        kwargs["mem_limit"] = f"{int(spec['memory_mib'])}m"
    if spec.get("cpus"):
        kwargs["nano_cpus"] = int(float(spec["cpus"]) * 1e9)
    kwargs.update(device_options(spec.get("vendor"), rec.device_indexes))
    return kwargs


def published_ports(attrs: dict[str, Any]) -> dict[str, int]:
    ports = ((attrs.get("NetworkSettings") or {}).get("Ports")) or {}
    out = {}
    for key, bindings in ports.items():
        for b in bindings or []:
            if b.get("HostPort"):
                out[key] = int(b["HostPort"])
                break
    return out


class DockerRuntime:
    name = "docker"

    def __init__(self, state: StateDir, client: Any = None) -> None:
        self.state = state
        self._client = client

    @property
    def client(self) -> Any:
        if self._client is None:
            try:
                import docker
            except ImportError as exc:
                raise StartError("the docker runtime needs the `docker` package") from exc
            try:
                self._client = docker.from_env()
            except Exception as exc:
                raise StartError(f"cannot reach the Docker daemon: {exc}") from exc
        return self._client

    def _container(self, rec: JobRecord) -> Any | None:
        try:
            return self.client.containers.get(rec.container_id or container_name(rec.id))
        except StartError:
            raise
        except Exception as exc:
            if type(exc).__name__ == "NotFound":
                return None
            raise

    def start(self, rec: JobRecord) -> None:
        existing = self._container(rec)
        if existing is not None:
            # A crash between `run` and saving the record: adopt the container we already made.
            container = existing
        else:
            try:
                mounts = job_mounts(self.state.root, rec.spec)
            except VolumeError as exc:
                raise StartError(f"cannot mount volumes: {exc}") from exc
            try:
                kwargs = run_kwargs(rec, mounts)
                docker_ssh_apply(kwargs, state=self.state, rec=rec)
                container = self.client.containers.run(**kwargs)
            except StartError:
                raise
            except Exception as exc:
                raise StartError(f"docker run failed: {exc}") from exc
        container.reload()
        rec.container_id = container.id
        rec.ports = published_ports(container.attrs)
        log.info("job.started job_id=%s container=%s", rec.id, container.id)

    def poll(self, rec: JobRecord) -> Status:
        try:
            container = self._container(rec)
            if container is None:
                return Status(running=False, known=False)
            container.reload()
        except Exception as exc:  # noqa: BLE001
            log.warning("docker.poll_failed job_id=%s error=%s", rec.id, exc)
            return Status(running=True)  # the daemon hiccuped; the container may be fine
        state = container.attrs.get("State") or {}
        if state.get("Running") or container.status in ("running", "created", "restarting"):
            return Status(running=True)
        return Status(running=False, exit_code=state.get("ExitCode"))

    def _kill(self, rec: JobRecord, sig: str) -> None:
        try:
            container = self._container(rec)
            if container is not None:
                container.kill(signal=sig)
                log.info("job.signal job_id=%s signal=%s", rec.id, sig)
        except Exception as exc:  # noqa: BLE001
            log.info("job.signal_failed job_id=%s signal=%s error=%s", rec.id, sig, exc)

    def terminate(self, rec: JobRecord) -> None:
        self._kill(rec, "SIGTERM")

    def kill(self, rec: JobRecord) -> None:
        self._kill(rec, "SIGKILL")

    def sync_logs(self, rec: JobRecord) -> None:
        """Append the container's output past what the local log file already holds."""
        try:
            container = self._container(rec)
            if container is None:
                return
            data = container.logs(stdout=True, stderr=True)
        except Exception as exc:  # noqa: BLE001
            log.info("docker.logs_failed job_id=%s error=%s", rec.id, exc)
            return
        path = self.state.job_log_path(rec.id)
        have = path.stat().st_size if path.exists() else 0
        if len(data) > have:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            try:
                os.write(fd, data[have:])
            finally:
                os.close(fd)
