"""The docker runtime, by the keyword arguments it hands the docker SDK (client injected)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from docker.types import DeviceRequest

from providers.agent.jobs import JobRecord
from providers.agent.runtimes.base import StartError, Status
from providers.agent.runtimes.docker import DockerRuntime, container_name
from providers.agent.state import StateDir

ROOT = Path(__file__).resolve().parents[2]


class NotFound(Exception):
    """Named like docker.errors.NotFound, which is all the runtime looks at."""


class FakeContainer:
    def __init__(self, name: str, kwargs: dict[str, Any]) -> None:
        self.id = f"c0ffee{name}"
        self.name = name
        self.kwargs = kwargs
        self.status = "running"
        self.signals: list[str] = []
        self.output = b""
        ports = {
            k: [{"HostIp": "0.0.0.0", "HostPort": str(32768 + i)}]
            for i, k in enumerate(kwargs.get("ports") or {})
        }
        self.attrs: dict[str, Any] = {
            "State": {"Running": True, "ExitCode": 0},
            "NetworkSettings": {"Ports": ports},
        }

    def reload(self) -> None:
        pass

    def kill(self, signal: str) -> None:
        self.signals.append(signal)

    def logs(self, stdout: bool, stderr: bool) -> bytes:
        return self.output


class FakeContainers:
    def __init__(self) -> None:
        self.by_name: dict[str, FakeContainer] = {}
        self.run_calls: list[dict[str, Any]] = []

    def run(self, **kwargs: Any) -> FakeContainer:
        self.run_calls.append(kwargs)
        c = FakeContainer(kwargs["name"], kwargs)
        self.by_name[c.name] = c
        return c

    def get(self, name_or_id: str) -> FakeContainer:
        for c in self.by_name.values():
            if name_or_id in (c.name, c.id):
                return c
        raise NotFound(name_or_id)


class FakeDocker:
    def __init__(self) -> None:
        self.containers = FakeContainers()


@pytest.fixture
def runtime(tmp_path: Path) -> DockerRuntime:
    state = StateDir(tmp_path)
    state.ensure()
    return DockerRuntime(state, client=FakeDocker())


def _job(job_id: int, **spec: Any) -> JobRecord:
    base = {
        "id": job_id,
        "runtime": "docker",
        "image": "pytorch/pytorch:2.4.0",
        "command": ["python", "train.py"],
        "env": {"A": "1"},
        "ports": [],
        "device_indexes": [],
    }
    return JobRecord(id=job_id, spec={**base, **spec})


def test_locked_down_container_with_published_ports(runtime: DockerRuntime) -> None:
    rec = _job(7, vendor="nvidia", device_indexes=[0, 1], ports=[8888, 6006], memory_mib=16384, cpus=8)

    runtime.start(rec)

    kwargs = runtime.client.containers.run_calls[0]
    assert kwargs["name"] == "suanli-job-7" == container_name(7)
    assert kwargs["image"] == "pytorch/pytorch:2.4.0"
    assert kwargs["command"] == ["python", "train.py"]
    assert kwargs["detach"] is True
    assert kwargs["privileged"] is False
    assert kwargs["security_opt"] == ["no-new-privileges"]
    assert kwargs["cap_drop"] == ["ALL"]
    assert kwargs["volumes"] == {}
    assert "binds" not in kwargs and "mounts" not in kwargs
    assert kwargs["mem_limit"] == "16384m"
    assert kwargs["nano_cpus"] == 8_000_000_000
    assert kwargs["ports"] == {"8888/tcp": None, "6006/tcp": None}
    assert kwargs["environment"] == {"A": "1", "CUDA_VISIBLE_DEVICES": "0,1", "SUANLI_JOB_ID": "7"}
    assert kwargs["device_requests"] == [DeviceRequest(device_ids=["0", "1"], capabilities=[["gpu"]])]
    assert rec.ports == {"8888/tcp": 32768, "6006/tcp": 32769}
    assert rec.container_id == "c0ffeesuanli-job-7"


@pytest.mark.parametrize(
    ("vendor", "devices", "env"),
    [
        (
            "huawei",
            ["/dev/davinci2", "/dev/davinci3", "/dev/davinci_manager", "/dev/devmm_svm", "/dev/hisi_hdc"],
            ("ASCEND_RT_VISIBLE_DEVICES", "2,3"),
        ),
        (
            "cambricon",
            ["/dev/cambricon_dev2", "/dev/cambricon_dev3", "/dev/cambricon_ctl"],
            ("MLU_VISIBLE_DEVICES", "2,3"),
        ),
        ("amd", ["/dev/kfd", "/dev/dri"], ("HIP_VISIBLE_DEVICES", "2,3")),
        ("hygon", ["/dev/kfd", "/dev/dri"], ("HIP_VISIBLE_DEVICES", "2,3")),
    ],
)
def test_vendor_device_nodes(
    runtime: DockerRuntime, vendor: str, devices: list[str], env: tuple[str, str]
) -> None:
    runtime.start(_job(8, vendor=vendor, device_indexes=[2, 3]))

    kwargs = runtime.client.containers.run_calls[0]
    assert kwargs["devices"] == [f"{d}:{d}:rwm" for d in devices]
    assert "device_requests" not in kwargs
    assert kwargs["environment"][env[0]] == env[1]
    assert "mem_limit" not in kwargs and "nano_cpus" not in kwargs


def test_poll_signals_and_exit(runtime: DockerRuntime) -> None:
    rec = _job(9)
    runtime.start(rec)
    container = runtime.client.containers.by_name["suanli-job-9"]
    assert runtime.poll(rec) == Status(running=True)

    runtime.terminate(rec)
    runtime.kill(rec)
    container.status = "exited"
    container.attrs["State"] = {"Running": False, "ExitCode": 137}

    assert container.signals == ["SIGTERM", "SIGKILL"]
    assert runtime.poll(rec) == Status(running=False, exit_code=137)


def test_reattach_by_deterministic_name_and_adopt_on_restart(runtime: DockerRuntime, tmp_path: Path) -> None:
    rec = _job(10)
    runtime.start(rec)
    restarted = DockerRuntime(runtime.state, client=runtime.client)

    # The record was lost before container_id was saved: the name still finds it.
    fresh = _job(10)
    assert restarted.poll(fresh).running
    restarted.start(fresh)  # a crash between `run` and saving: adopt, do not run twice

    assert len(runtime.client.containers.run_calls) == 1
    assert fresh.container_id == rec.container_id
    assert restarted.poll(_job(11)) == Status(running=False, known=False)


def test_logs_are_appended_to_the_local_file(runtime: DockerRuntime) -> None:
    rec = _job(12)
    runtime.start(rec)
    container = runtime.client.containers.by_name["suanli-job-12"]
    container.output = b"hello\n"
    runtime.sync_logs(rec)
    container.output = b"hello\nworld\n"
    runtime.sync_logs(rec)

    assert runtime.state.job_log_path(12).read_bytes() == b"hello\nworld\n"


def test_missing_image_is_a_start_error(runtime: DockerRuntime) -> None:
    with pytest.raises(StartError, match="no image"):
        runtime.start(_job(13, image=None))


def test_docker_sdk_is_not_imported_by_the_daemon() -> None:
    code = (
        "import sys\n"
        "import providers.agent.cli, providers.agent.daemon, providers.agent.runtimes.process\n"
        "import providers.agent.runtimes.docker\n"
        "assert 'docker' not in sys.modules, 'docker imported eagerly'\n"
        "assert 'django' not in sys.modules, 'django imported'\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
