"""The daemon against a fake exchange: job lifecycle, stops, spool durability, restarts, logs."""

from __future__ import annotations

import itertools
import os
import signal
import sys
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import psutil
import pytest

from providers.agent.client import AgentClient, ApiError, Unreachable
from providers.agent.daemon import Agent, AgentConfig
from providers.agent.discovery import detect
from providers.agent.jobs import JobStore
from providers.agent.logship import CHUNK
from providers.agent.simulate import SimulatedTelemetry
from providers.agent.spool import EVENTS, USAGE, Spool
from providers.agent.state import StateDir, iso, parse_iso, utcnow
from tests.agent.fakes import FakeExchange


def make_agent(tmp_path: Path, exchange: FakeExchange, **config: Any) -> Agent:
    cfg = AgentConfig(
        state_dir=tmp_path / "state",
        server=exchange.url,
        credential=exchange.credential,
        name="node-a",
        simulate="h100x8",
        heartbeat_interval=0.2,
        sample_interval=config.pop("sample_interval", 3600.0),
        work_wait=1,
        tick=0.05,
        **config,
    )
    return Agent(
        cfg,
        inventory=detect(simulate="h100x8", name="node-a"),
        telemetry=SimulatedTelemetry("h100x8", "node-a"),
    )


def job(job_id: int, code: str, **extra: Any) -> dict[str, Any]:
    return {
        "id": job_id,
        "runtime": "process",
        "image": None,
        "command": [sys.executable, "-c", code],
        "env": {},
        "ports": [],
        "device_indexes": [0, 1],
        "vendor": "nvidia",
        "memory_mib": None,
        "cpus": None,
        **extra,
    }


def wait_for(cond: Callable[[], Any], timeout: float = 15.0, step: Callable[[], None] | None = None) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if step:
            step()
        value = cond()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError("condition not met in time")


def states(exchange: FakeExchange, job_id: int) -> list[str]:
    return [e["state"] for e in sorted(exchange.events.get(job_id, []), key=lambda e: e["seq"])]


LONG = "import time\nprint('up', flush=True)\ntime.sleep(60)"


def test_job_lifecycle_events_logs_and_usage(tmp_path: Path, exchange: FakeExchange) -> None:
    agent = make_agent(tmp_path, exchange, sample_interval=0.1)
    code = "import time\nfor i in range(5):\n    print('step', i, flush=True)\n    time.sleep(0.1)\n"

    agent.handle_work({"jobs": [job(7, code)], "stop": []})
    rec = agent.store.get(7)
    wait_for(lambda: rec.finished, step=agent.supervise_once)
    agent.ship_once()

    events = sorted(exchange.events[7], key=lambda e: e["seq"])
    assert [(e["seq"], e["state"]) for e in events] == [
        (1, "accepted"),
        (2, "starting"),
        (3, "running"),
        (4, "exited"),
    ]
    assert events[-1]["exit_code"] == 0
    assert set(events[0]) == {"seq", "state", "at", "exit_code", "ports", "message"}
    assert exchange.log_data[7] == "".join(f"step {i}\n" for i in range(5))
    samples = sorted((s for (j, _), s in exchange.samples.items() if j == 7), key=lambda s: s["seq"])
    assert [s["seq"] for s in samples] == list(range(1, len(samples) + 1))
    assert len(samples) >= 2
    for prev, nxt in itertools.pairwise(samples):
        assert prev["window_end"] == nxt["window_start"]  # contiguous: nothing lost, no overlap
    assert samples[0]["window_start"] == events[2]["at"]
    assert parse_iso(samples[-1]["window_end"]) <= parse_iso(events[-1]["at"])
    assert set(samples[0]) == {
        "job_id",
        "seq",
        "window_start",
        "window_end",
        "device_count",
        "utilization_pct",
        "memory_used_mib",
        "power_w",
    }
    assert samples[0]["device_count"] == 2
    assert samples[0]["power_w"] is not None
    assert agent.spool.count(EVENTS) == agent.spool.count(USAGE) == 0


def test_repeated_assignment_is_ignored(tmp_path: Path, exchange: FakeExchange) -> None:
    agent = make_agent(tmp_path, exchange)
    spec = job(8, LONG)
    agent.handle_work({"jobs": [spec]})
    rec = agent.store.get(8)
    wait_for(lambda: rec.state == "running")

    agent.handle_work({"jobs": [spec, spec]})
    agent.ship_once()

    assert states(exchange, 8) == ["accepted", "starting", "running"]
    agent.request_stop({"job_id": 8, "deadline": iso(utcnow()), "reason": "buyer_stop"})
    wait_for(lambda: rec.finished, step=agent.supervise_once)


def test_stop_sends_sigterm_then_sigkill_at_deadline(tmp_path: Path, exchange: FakeExchange) -> None:
    agent = make_agent(tmp_path, exchange)
    code = (
        "import signal, time\n"
        "signal.signal(signal.SIGTERM, lambda *a: print('got TERM', flush=True))\n"
        "print('up', flush=True)\n"
        "while True: time.sleep(0.05)\n"
    )
    agent.handle_work({"jobs": [job(9, code)]})
    rec = agent.store.get(9)
    log = agent.state.job_log_path(9)
    wait_for(lambda: rec.state == "running" and log.exists() and "up" in log.read_text())

    notice = time.monotonic()
    deadline = utcnow() + timedelta(seconds=1.5)
    agent.handle_work({"stop": [{"job_id": 9, "deadline": iso(deadline), "reason": "preempted"}]})
    wait_for(lambda: "got TERM" in log.read_text())
    assert not rec.finished
    wait_for(lambda: rec.finished, step=agent.supervise_once)
    agent.ship_once()

    assert time.monotonic() - notice >= 1.2
    last = sorted(exchange.events[9], key=lambda e: e["seq"])[-1]
    assert last["state"] == "stopped"
    assert last["exit_code"] == 137
    assert last["message"] == "preempted"


def test_usage_spooled_before_send_kept_on_failure_removed_after_ack(
    tmp_path: Path, exchange: FakeExchange
) -> None:
    agent = make_agent(tmp_path, exchange)
    agent.handle_work({"jobs": [job(10, LONG)]})
    rec = agent.store.get(10)
    wait_for(lambda: rec.state == "running")
    agent.ship_once()
    exchange.fail_next["/usage"] = [503, 500]
    time.sleep(0.05)
    agent._sample(rec, utcnow())

    assert agent.spool.count(USAGE) == 1  # on disk before any send
    for _ in range(2):
        with pytest.raises(Unreachable):
            agent.ship_once()
        assert agent.spool.count(USAGE) == 1
    agent.ship_once()

    assert agent.spool.count(USAGE) == 0
    assert (10, 1) in exchange.samples
    usage_posts = exchange.paths("/usage")
    assert len(usage_posts) == 3 and all(p.body["samples"][0]["seq"] == 1 for p in usage_posts)
    agent.request_stop({"job_id": 10, "deadline": iso(utcnow())})
    wait_for(lambda: rec.finished, step=agent.supervise_once)


def test_a_refused_sample_is_set_aside_and_the_rest_of_its_batch_is_sent(
    tmp_path: Path, exchange: FakeExchange
) -> None:
    agent = make_agent(tmp_path, exchange)
    base = {"job_id": 14, "window_start": iso(utcnow()), "window_end": iso(utcnow()), "device_count": 1}
    for seq in (1, 2, 3):
        agent.spool.put_usage({**base, "seq": seq})
    exchange.refused_samples = {(14, 2)}

    agent.ship_once()

    assert sorted(exchange.samples) == [(14, 1), (14, 3)]
    assert agent.spool.count(USAGE) == 0
    rejected = list((tmp_path / "state" / "spool" / "rejected").iterdir())
    assert len(rejected) == 1


def test_events_resent_until_acknowledged(tmp_path: Path, exchange: FakeExchange) -> None:
    agent = make_agent(tmp_path, exchange)
    exchange.fail_next["/jobs/11/events"] = [502]
    agent.handle_work({"jobs": [job(11, "print('hi')")]})
    rec = agent.store.get(11)
    wait_for(lambda: rec.finished, step=agent.supervise_once)

    with pytest.raises(Unreachable):
        agent.ship_once()
    assert 11 not in exchange.events
    agent.ship_once()

    assert states(exchange, 11) == ["accepted", "starting", "running", "exited"]


def test_restart_reattaches_and_continues_sequences(tmp_path: Path, exchange: FakeExchange) -> None:
    first = make_agent(tmp_path, exchange)
    first.handle_work({"jobs": [job(12, LONG)]})
    rec = first.store.get(12)
    wait_for(lambda: rec.state == "running")
    time.sleep(0.05)
    first._sample(rec, utcnow())
    time.sleep(0.05)
    first._sample(rec, utcnow())
    first.ship_once()
    last_window_end = rec.usage_window_end
    pid = rec.pid

    # kill -9 of the agent: nothing more runs in `first`; a new agent opens the same state dir.
    second = make_agent(tmp_path, exchange)
    second.recover()
    again = second.store.get(12)
    assert again.state == "running" and again.pid == pid
    time.sleep(0.05)
    second._sample(again, utcnow())
    second.request_stop({"job_id": 12, "deadline": iso(utcnow() + timedelta(seconds=5))})
    wait_for(lambda: again.finished, step=second.supervise_once)
    second.ship_once()

    samples = sorted((s for (j, _), s in exchange.samples.items() if j == 12), key=lambda s: s["seq"])
    assert [s["seq"] for s in samples] == [1, 2, 3, 4]  # 4: the final partial window at the stop
    assert samples[2]["window_start"] == last_window_end
    assert states(exchange, 12) == ["accepted", "starting", "running", "stopped"]
    assert [e["seq"] for e in exchange.events[12]] == [1, 2, 3, 4]


def test_crash_between_spool_write_and_record_save_reuses_no_seq(
    tmp_path: Path, exchange: FakeExchange
) -> None:
    agent = make_agent(tmp_path, exchange)
    agent.handle_work({"jobs": [job(13, LONG)]})
    rec = agent.store.get(13)
    wait_for(lambda: rec.state == "running")
    time.sleep(0.05)
    agent._sample(rec, utcnow())
    # Simulate the crash window: a spooled sample (seq 2) whose record update never landed.
    orphan_end = iso(utcnow())
    agent.spool.put_usage(
        {
            **agent.spool.latest(USAGE, 13).payload,
            "seq": 2,
            "window_start": rec.usage_window_end,
            "window_end": orphan_end,
        }
    )

    store = JobStore(StateDir(tmp_path / "state"), Spool(tmp_path / "state" / "spool"))
    store.load()
    reloaded = store.get(13)
    assert reloaded.usage_seq == 2
    assert reloaded.usage_window_end == orphan_end
    time.sleep(0.05)
    sample = store.sample(reloaded, now=utcnow(), utilization_pct=None, memory_used_mib=None, power_w=None)
    assert sample["seq"] == 3 and sample["window_start"] == orphan_end
    os.killpg(rec.pid, signal.SIGKILL)


def test_jobs_that_died_while_the_agent_was_down(tmp_path: Path, exchange: FakeExchange) -> None:
    first = make_agent(tmp_path, exchange)
    first.handle_work({"jobs": [job(14, "import time; time.sleep(0.3); raise SystemExit(4)"), job(15, LONG)]})
    exited, killed = first.store.get(14), first.store.get(15)
    wait_for(lambda: exited.state == "running" and killed.state == "running")
    psutil.Process(exited.pid).wait(timeout=15)
    os.killpg(killed.pid, signal.SIGKILL)  # e.g. the OOM killer took the whole group
    psutil.Process(killed.pid).wait(timeout=15)

    second = make_agent(tmp_path, exchange)
    second.recover()
    second.ship_once()

    assert states(exchange, 14)[-1] == "exited"
    assert exchange.events[14][-1]["exit_code"] == 4
    assert states(exchange, 15)[-1] == "failed"
    assert second.store.running_ids() == []


def test_logs_ship_in_64k_chunks_and_resume_after_restart(tmp_path: Path, exchange: FakeExchange) -> None:
    agent = make_agent(tmp_path, exchange)
    agent.handle_work({"jobs": [job(16, "print('x')")]})
    rec = agent.store.get(16)
    wait_for(lambda: rec.finished, step=agent.supervise_once)
    body = "日志 line %06d\n".encode()  # multi-byte text: chunks must cut between characters
    path = agent.state.job_log_path(16)
    with open(path, "ab") as fh:
        for i in range(12000):
            fh.write(body.replace(b"%06d", b"%06d" % i))

    agent.shipper.ship_one(rec)
    agent.shipper.ship_one(rec)
    sent_before = rec.log_file_pos
    # Restart: a new agent reads the positions back and carries on from there.
    second = make_agent(tmp_path, exchange)
    second.recover()
    second.ship_once()
    second.ship_once()
    second.ship_once()

    chunks = exchange.paths("/jobs/16/logs")
    assert all(len(c.body["data"].encode()) <= CHUNK for c in chunks)
    assert [c.body["offset"] for c in chunks][:3] == [
        0,
        len(chunks[0].body["data"].encode()),
        chunks[2].body["offset"],
    ]
    assert sent_before > 0
    assert exchange.log_data[16].encode() == path.read_bytes()
    assert second.store.get(16).log_file_pos == path.stat().st_size


def test_server_offset_is_authoritative(tmp_path: Path, exchange: FakeExchange) -> None:
    agent = make_agent(tmp_path, exchange)
    agent.handle_work({"jobs": [job(17, "print('a' * 99)")]})
    rec = agent.store.get(17)
    wait_for(lambda: rec.finished, step=agent.supervise_once)
    # The server already holds the first 50 bytes (acked just before a crash we never saw).
    exchange.log_offsets[17] = 50
    exchange.log_data[17] = "a" * 50

    agent.ship_once()
    agent.ship_once()

    assert exchange.log_data[17] == "a" * 99 + "\n"
    assert rec.log_server_pos == rec.log_file_pos == 100


def test_log_offset_gap_resumes_from_the_servers_offset(tmp_path: Path, exchange: FakeExchange) -> None:
    exchange.strict_log_offsets = True
    agent = make_agent(tmp_path, exchange)
    agent.handle_work({"jobs": [job(20, "print('b' * 99)")]})
    rec = agent.store.get(20)
    wait_for(lambda: rec.finished, step=agent.supervise_once)
    # The agent believes the server holds 60 bytes; the server has only the first 40 (say, it was
    # restored from a backup): it answers 409 log_offset_gap with next_offset ["40"].
    exchange.log_offsets[20] = 40
    exchange.log_data[20] = "b" * 40
    rec.log_server_pos = rec.log_file_pos = 60

    agent.ship_once()

    assert [r.body["offset"] for r in exchange.paths("/jobs/20/logs")] == [60, 40]
    assert exchange.log_data[20] == "b" * 99 + "\n"
    assert rec.log_server_pos == rec.log_file_pos == 100
    assert agent.store.get(20).log_server_pos == 100


def test_log_backlog_is_bounded(tmp_path: Path, exchange: FakeExchange) -> None:
    agent = make_agent(tmp_path, exchange, max_log_backlog=1000)
    agent.handle_work({"jobs": [job(18, "print('z' * 4999)")]})
    rec = agent.store.get(18)
    wait_for(lambda: rec.finished, step=agent.supervise_once)

    agent.ship_once()

    assert rec.log_dropped == 4500
    assert "4500 bytes of log dropped" in exchange.log_data[18]
    assert exchange.log_data[18].endswith("z" * 499 + "\n")


def test_heartbeat_payload_shape(tmp_path: Path, exchange: FakeExchange) -> None:
    agent = make_agent(tmp_path, exchange)

    payload = agent.heartbeat_payload()
    agent.client.heartbeat(**payload)

    body = exchange.paths("/heartbeat")[0].body
    assert body["agent_version"] == "0.1.0"
    assert body["running_jobs"] == []
    assert len(body["devices"]) == 8
    assert set(body["devices"][0]) == {
        "index",
        "uuid",
        "health",
        "utilization_pct",
        "memory_used_mib",
        "power_w",
        "temperature_c",
    }


def test_client_errors(exchange: FakeExchange) -> None:
    with pytest.raises(ApiError) as info:
        AgentClient(exchange.url, "nc_wrong").heartbeat(running_jobs=[], devices=[])
    assert info.value.status == 401 and info.value.auth and info.value.message == "bad credential"

    exchange.fail_next["/heartbeat"] = [500]
    with pytest.raises(Unreachable):
        AgentClient(exchange.url, exchange.credential).heartbeat(running_jobs=[], devices=[])
    with pytest.raises(Unreachable):
        AgentClient("http://127.0.0.1:9", "x", timeout=2).heartbeat(running_jobs=[], devices=[])


def test_threads_end_to_end(tmp_path: Path, exchange: FakeExchange) -> None:
    exchange.work_replies.append({"jobs": [job(19, "print('threaded')")], "stop": []})
    agent = make_agent(tmp_path, exchange)
    agent.start()
    try:
        wait_for(lambda: states(exchange, 19)[-1:] == ["exited"] and 19 in exchange.log_data)
        wait_for(lambda: len(exchange.paths("/heartbeat")) >= 2)
    finally:
        agent.stop()

    assert exchange.log_data[19] == "threaded\n"
    work = exchange.paths("/work")
    assert work[0].path == "/work?wait=1" and work[0].body == {"running": []}
    assert work[0].headers["Authorization"] == "Bearer nc_test"
