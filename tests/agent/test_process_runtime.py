"""The process runtime for real: log files, exit codes, signals, re-attachment."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import psutil

from providers.agent.jobs import JobRecord
from providers.agent.runtimes.base import Status
from providers.agent.runtimes.process import ProcessRuntime
from providers.agent.state import StateDir


def _state(tmp_path: Path) -> StateDir:
    state = StateDir(tmp_path / "state")
    state.ensure()
    return state


def _job(job_id: int, code: str, **spec: object) -> JobRecord:
    return JobRecord(
        id=job_id, spec={"id": job_id, "runtime": "process", "command": [sys.executable, "-c", code], **spec}
    )


def _wait_exit(rt: ProcessRuntime, rec: JobRecord, timeout: float = 15.0) -> Status:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = rt.poll(rec)
        if not status.running:
            return status
        time.sleep(0.05)
    raise AssertionError("job did not exit")


def _wait_for_log(state: StateDir, rec: JobRecord, text: str, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    path = state.job_log_path(rec.id)
    while time.monotonic() < deadline:
        if path.exists() and text in path.read_text():
            return
        time.sleep(0.05)
    raise AssertionError(f"{text!r} never appeared in the log")


def test_runs_job_with_log_env_and_exit_code(tmp_path: Path) -> None:
    state = _state(tmp_path)
    rt = ProcessRuntime(state)
    code = (
        "import os, sys\n"
        "for i in range(3): print('line', i, flush=True)\n"
        "print('err', file=sys.stderr, flush=True)\n"
        "print('cuda', os.environ['CUDA_VISIBLE_DEVICES'], os.environ['FOO'], flush=True)\n"
        "sys.exit(3)\n"
    )
    rec = _job(1, code, vendor="nvidia", device_indexes=[0, 2], env={"FOO": "bar"}, ports=[8888])

    rt.start(rec)
    status = _wait_exit(rt, rec)

    assert status == Status(running=False, exit_code=3)
    log = state.job_log_path(1).read_text()
    assert "line 0\nline 1\nline 2\n" in log
    assert "err\n" in log
    assert "cuda 0,2 bar" in log
    assert rec.pid and rec.create_time
    assert rec.ports == {"8888/tcp": 8888}
    assert oct(state.job_log_path(1).stat().st_mode & 0o777) == "0o600"


def test_vendor_visible_device_variables(tmp_path: Path) -> None:
    state = _state(tmp_path)
    rt = ProcessRuntime(state)
    names = {
        "huawei": "ASCEND_RT_VISIBLE_DEVICES",
        "cambricon": "MLU_VISIBLE_DEVICES",
        "amd": "HIP_VISIBLE_DEVICES",
        "hygon": "HIP_VISIBLE_DEVICES",
        "intel": "HABANA_VISIBLE_MODULES",
    }
    for job_id, (vendor, var) in enumerate(names.items(), start=10):
        rec = _job(job_id, f"import os; print(os.environ[{var!r}])", vendor=vendor, device_indexes=[1, 3])
        rt.start(rec)
        assert _wait_exit(rt, rec).exit_code == 0
        assert state.job_log_path(job_id).read_text().strip() == "1,3"


def test_sigterm_at_notice_ends_a_cooperative_job(tmp_path: Path) -> None:
    state = _state(tmp_path)
    rt = ProcessRuntime(state)
    rec = _job(2, "import time\nprint('up', flush=True)\ntime.sleep(60)")
    rt.start(rec)
    _wait_for_log(state, rec, "up")

    rt.terminate(rec)
    status = _wait_exit(rt, rec)

    assert status.exit_code == 128 + 15


def test_sigkill_at_deadline_ends_a_job_that_ignores_sigterm(tmp_path: Path) -> None:
    state = _state(tmp_path)
    rt = ProcessRuntime(state)
    code = (
        "import signal, time\n"
        "signal.signal(signal.SIGTERM, lambda *a: print('ignoring TERM', flush=True))\n"
        "print('up', flush=True)\n"
        "while True: time.sleep(0.1)\n"
    )
    rec = _job(3, code)
    rt.start(rec)
    _wait_for_log(state, rec, "up")

    rt.terminate(rec)
    _wait_for_log(state, rec, "ignoring TERM")
    assert rt.poll(rec).running
    rt.kill(rec)
    status = _wait_exit(rt, rec)

    assert status.exit_code == 128 + 9


def test_reattach_after_restart(tmp_path: Path) -> None:
    state = _state(tmp_path)
    first = ProcessRuntime(state)
    rec = _job(4, "import time\nprint('up', flush=True)\ntime.sleep(60)")
    first.start(rec)
    _wait_for_log(state, rec, "up")

    # A restarted agent: a new runtime over the same state dir, the record read back from disk.
    second = ProcessRuntime(state)
    again = JobRecord(id=4, spec=rec.spec, pid=rec.pid, create_time=rec.create_time)
    assert second.poll(again).running

    second.terminate(again)
    status = _wait_exit(second, again)
    assert status.running is False
    assert status.exit_code == 143  # recorded by the wrapper, though we are not its parent


def test_job_that_finished_while_agent_was_down_reports_its_code(tmp_path: Path) -> None:
    state = _state(tmp_path)
    first = ProcessRuntime(state)
    rec = _job(5, "import sys; sys.exit(7)")
    first.start(rec)
    psutil.Process(rec.pid).wait(timeout=15)

    second = ProcessRuntime(state)
    again = JobRecord(id=5, spec=rec.spec, pid=rec.pid, create_time=rec.create_time)
    assert second.poll(again) == Status(running=False, exit_code=7)


def test_recycled_pid_is_not_mistaken_for_the_job(tmp_path: Path) -> None:
    state = _state(tmp_path)
    rt = ProcessRuntime(state)
    me = psutil.Process()
    stranger = JobRecord(id=6, spec={"id": 6}, pid=me.pid, create_time=me.create_time() - 1000)

    assert rt.poll(stranger) == Status(running=False, exit_code=None, known=False)
    rt.kill(stranger)  # must not signal the unrelated process (this test run)
