"""Discovery against recorded vendor-tool outputs served by fake executables on PATH."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from providers.agent.discovery import detect
from tests.agent.fakes import (
    HL_SMI_ARGS,
    HY_SMI_ARGS,
    NVIDIA_QUERY,
    ROCM_SMI_ARGS,
    FakeBin,
)

ROOT = Path(__file__).resolve().parents[2]


def _nvidia(fake_bin: FakeBin, version: str | tuple[int, str] = "nvidia-smi-version.txt") -> None:
    fake_bin.tool(
        "nvidia-smi",
        {NVIDIA_QUERY: "nvidia-smi-query.csv", "--version": version, "": "nvidia-smi.txt"},
    )


def test_nvidia_smi_inventory(fake_bin: FakeBin) -> None:
    _nvidia(fake_bin)

    inv = detect().to_json()

    assert [d["index"] for d in inv["devices"]] == [0, 1, 2, 3]
    first = inv["devices"][0]
    assert first == {
        "vendor": "nvidia",
        "model": "NVIDIA H100 80GB HBM3",
        "index": 0,
        "uuid": "GPU-3f5a8c1e-9d2b-4e7a-b1c6-0a9e8d7c6b51",
        "bus_id": "0000:18:00.0",
        "memory_mib": 81559,
    }
    assert inv["software"] == {"cuda": "12.4", "driver": "550.54.15"}


def test_nvidia_smi_inventory_recorded_on_a_real_h200(fake_bin: FakeBin) -> None:
    # Captured verbatim from nvidia-smi on an H200 with driver 580.159.04 (see golden/README.md).
    fake_bin.tool(
        "nvidia-smi",
        {NVIDIA_QUERY: "nvidia-smi-query-h200-real.csv", "--version": "nvidia-smi-version-580-real.txt"},
    )

    inv = detect().to_json()

    assert inv["devices"] == [
        {
            "vendor": "nvidia",
            "model": "NVIDIA H200",
            "index": 0,
            "uuid": "GPU-17224ae2-66d2-29f4-614d-d9089a2d5ec8",
            "bus_id": "0000:00:06.0",
            "memory_mib": 143771,
        }
    ]
    assert inv["software"] == {"cuda": "13.0", "driver": "580.159.04"}


def test_nvidia_cuda_version_from_header_when_version_flag_fails(
    fake_bin: FakeBin, capsys: pytest.CaptureFixture[str]
) -> None:
    _nvidia(fake_bin, version=(6, "Invalid combination of input arguments"))

    inv = detect().to_json()

    assert inv["software"]["cuda"] == "12.4"
    assert len(inv["devices"]) == 4
    assert "nvidia-smi --version exited with status 6" in capsys.readouterr().err


def test_amd_smi_static_with_uuids_and_rocm_version(fake_bin: FakeBin) -> None:
    fake_bin.tool(
        "amd-smi",
        {
            "static --json": "amd-smi-static.json",
            "list --json": "amd-smi-list.json",
            "version": "amd-smi-version.txt",
        },
    )

    inv = detect().to_json()

    assert len(inv["devices"]) == 4
    d = inv["devices"][1]
    assert d["vendor"] == "amd"
    assert d["model"] == "AMD Instinct MI300X"
    assert d["bus_id"] == "0000:22:00.0"
    assert d["memory_mib"] == 196592
    assert d["uuid"] == "02ff74a1-0000-1000-8001-9a31c0f2d7e4"
    assert inv["software"] == {"rocm": "6.2.0", "driver": "6.7.0"}


def test_amd_smi_gpu_data_wrapper_of_rocm_6_4(fake_bin: FakeBin, tmp_path: Path) -> None:
    from providers.agent.discovery.amd import parse_amd_smi_static

    gpus = json.loads((Path(__file__).parent / "golden" / "amd-smi-static.json").read_text())
    gpus[0]["vram"]["size"] = "196592 MB"  # older amd-smi printed sizes as strings

    result = parse_amd_smi_static(json.dumps({"gpu_data": gpus}))

    assert [d.memory_mib for d in result.devices] == [196592] * 4
    assert result.devices[0].uuid == "amd-0000:0c:00.0"  # no `amd-smi list`: bus-derived id


def test_rocm_smi_fallback_when_amd_smi_missing(fake_bin: FakeBin) -> None:
    fake_bin.tool("rocm-smi", {ROCM_SMI_ARGS: "rocm-smi.json"})

    inv = detect().to_json()

    assert [(d["vendor"], d["model"], d["memory_mib"]) for d in inv["devices"]] == [
        ("amd", "AMD Instinct MI300X", 196592),
        ("amd", "AMD Instinct MI300X", 196592),
    ]
    assert inv["devices"][0]["uuid"] == "0x9a31c0f2d7e4b100"
    assert inv["devices"][0]["bus_id"] == "0000:0c:00.0"


def test_ascend_910b_layout_and_cann_version(fake_bin: FakeBin) -> None:
    fake_bin.tool("npu-smi", {"info": "npu-smi-910b.txt"})
    toolkit = Path(os.environ["ASCEND_TOOLKIT_HOME"])
    (toolkit / "aarch64-linux").mkdir()
    (toolkit / "aarch64-linux" / "ascend_toolkit_install.info").write_text(
        "package_name=Ascend-cann-toolkit\nversion=8.0.RC2\ninnerversion=V100R001C18SPC001\n"
    )

    inv = detect()

    assert [(d.index, d.model, d.memory_mib) for d in inv.devices] == [
        (0, "910B1", 65536),
        (1, "910B1", 65536),
        (2, "910B1", 65536),
        (3, "910B1", 65536),
    ]
    assert inv.devices[0].bus_id == "0000:c1:00.0"
    assert inv.devices[3].health == "degraded"
    assert inv.software == {"driver": "23.0.6", "cann": "8.0.RC2"}
    assert inv.devices[0].vendor == "huawei"


def test_ascend_310p_layout_uses_device_column_and_ddr_memory(fake_bin: FakeBin) -> None:
    fake_bin.tool("npu-smi", {"info": "npu-smi-310p.txt"})

    inv = detect()

    assert [(d.index, d.model, d.memory_mib, d.bus_id) for d in inv.devices] == [
        (0, "310P3", 44280, "0000:01:00.0"),
        (1, "310P3", 43693, "0000:01:00.0"),
        (2, "310P3", 44280, "0000:02:00.0"),
        (3, "310P3", 43693, "0000:02:00.0"),
    ]
    assert len({d.uuid for d in inv.devices}) == 4


def test_cambricon_cnmon_blocks(fake_bin: FakeBin) -> None:
    fake_bin.tool("cnmon", {"info": "cnmon-info.txt"})
    Path(os.environ["NEUWARE_HOME"], "version.txt").write_text("Neuware Version 3.10.2\n")

    inv = detect().to_json()

    assert inv["devices"] == [
        {
            "vendor": "cambricon",
            "model": "MLU370-X8",
            "index": 0,
            "uuid": "3E9F6A2C-1B4D-4E8F-9A0B-7C5D3E1F2A40",
            "bus_id": "0000:1a:00.0",
            "memory_mib": 49152,
        },
        {
            "vendor": "cambricon",
            "model": "MLU370-X8",
            "index": 1,
            "uuid": "8A1C0D2E-5F3B-4A9C-8E7D-6B2A1C0F9E31",
            "bus_id": "0000:b1:00.0",
            "memory_mib": 49152,
        },
    ]
    assert inv["software"] == {"driver": "5.10.22", "neuware": "3.10.2"}


def test_hygon_dcu_card_keys_with_banner_and_dtk(fake_bin: FakeBin) -> None:
    fake_bin.tool("hy-smi", {HY_SMI_ARGS: "hy-smi-dcu.json"})
    info = Path(os.environ["ROCM_PATH"], ".info")
    info.mkdir()
    (info / "version").write_text("24.04.1-123\n")

    inv = detect().to_json()

    assert [(d["vendor"], d["model"], d["memory_mib"]) for d in inv["devices"]] == [
        ("hygon", "K100_AI", 65520),
        ("hygon", "K100_AI", 65520),
    ]
    assert inv["devices"][1]["bus_id"] == "0000:c5:00.0"
    assert inv["software"] == {"dtk": "24.04.1"}


def test_hygon_hcu_keys_and_missing_unique_id(fake_bin: FakeBin) -> None:
    fake_bin.tool("hy-smi", {HY_SMI_ARGS: "hy-smi-hcu.json"})

    devices = detect().devices

    assert [(d.index, d.model) for d in devices] == [(0, "K100_AI"), (1, "K100_AI"), (2, "K100_AI")]
    assert devices[0].uuid == "0x2c0e4a17b3d59f00"
    assert devices[2].uuid == "hygon-0000:5d:00.0"


def test_hygon_cards_not_double_counted_by_rocm_smi(fake_bin: FakeBin, tmp_path: Path) -> None:
    fake_bin.tool("hy-smi", {HY_SMI_ARGS: "hy-smi-dcu.json"})
    # DTK also ships rocm-smi, which lists the same cards by the same PCI bus ids.
    golden = json.loads(
        (Path(__file__).parent / "golden" / "hy-smi-dcu.json")
        .read_text()
        .split("\n", 1)[1]
        .rsplit("\n", 2)[0]
    )
    same = tmp_path / "rocm-same.json"
    same.write_text(json.dumps(golden))
    fake_bin.tool("rocm-smi", {ROCM_SMI_ARGS: str(same)})

    inv = detect()

    assert [d.vendor for d in inv.devices] == ["hygon", "hygon"]


@pytest.mark.parametrize(
    ("golden", "model", "memory", "synapseai"),
    [("hl-smi.csv", "HL-325L", 131072, "1.19.1"), ("hl-smi-gaudi2.csv", "HL-225", 98304, "1.17.0")],
)
def test_gaudi_hl_smi(fake_bin: FakeBin, golden: str, model: str, memory: int, synapseai: str) -> None:
    fake_bin.tool("hl-smi", {HL_SMI_ARGS: golden})

    inv = detect().to_json()

    assert {d["model"] for d in inv["devices"]} == {model}
    assert {d["memory_mib"] for d in inv["devices"]} == {memory}
    assert inv["devices"][0]["vendor"] == "intel"
    assert inv["devices"][0]["uuid"].startswith("01P")
    assert inv["software"]["synapseai"] == synapseai


def test_mixed_vendors_on_one_host(fake_bin: FakeBin) -> None:
    _nvidia(fake_bin)
    fake_bin.tool("hl-smi", {HL_SMI_ARGS: "hl-smi-gaudi2.csv"})

    inv = detect()

    assert [d.vendor for d in inv.devices] == ["nvidia"] * 4 + ["intel"] * 2


def test_no_tools_means_one_cpu_device(fake_bin: FakeBin, capsys: pytest.CaptureFixture[str]) -> None:
    inv = detect().to_json()

    assert len(inv["devices"]) == 1
    cpu = inv["devices"][0]
    assert cpu["vendor"] == "cpu"
    assert cpu["model"] in ("x86-64 CPU", "arm64 CPU")
    assert cpu["memory_mib"] == inv["host"]["memory_mib"]
    assert inv["host"]["cpu_cores"] >= 1
    assert inv["software"] == {}
    assert capsys.readouterr().err == ""  # absent tools are normal, not worth a warning


def test_failing_tool_is_skipped_with_warning(fake_bin: FakeBin, capsys: pytest.CaptureFixture[str]) -> None:
    fake_bin.tool(
        "nvidia-smi",
        {NVIDIA_QUERY: (9, "NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver.")},
    )
    fake_bin.tool("hl-smi", {HL_SMI_ARGS: "hl-smi-gaudi2.csv"})

    inv = detect()

    assert [d.vendor for d in inv.devices] == ["intel", "intel"]
    err = capsys.readouterr().err
    assert "warning:" in err and "exited with status 9" in err


@pytest.mark.parametrize(
    ("tool", "args"),
    [
        ("nvidia-smi", NVIDIA_QUERY),
        ("amd-smi", "static --json"),
        ("npu-smi", "info"),
        ("cnmon", "info"),
        ("hy-smi", HY_SMI_ARGS),
        ("hl-smi", HL_SMI_ARGS),
    ],
)
def test_garbage_output_is_skipped_with_warning(
    fake_bin: FakeBin, capsys: pytest.CaptureFixture[str], tool: str, args: str
) -> None:
    fake_bin.tool(tool, {args: (0, "Segmentation fault? <html>garbage</html>")})

    inv = detect()

    assert [d.vendor for d in inv.devices] == ["cpu"]
    assert "not understood" in capsys.readouterr().err


def test_hanging_tool_times_out_with_warning(fake_bin: FakeBin, capsys: pytest.CaptureFixture[str]) -> None:
    fake_bin.tool("npu-smi", {"info": 30.0})

    started = time.monotonic()
    inv = detect()

    assert time.monotonic() - started < 10
    assert [d.vendor for d in inv.devices] == ["cpu"]
    assert "timed out" in capsys.readouterr().err


def _cli(
    args: list[str], env_path: str, extra_env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    env = {
        "PATH": env_path,
        "SUANLI_AGENT_NO_NVML": "1",
        "SUANLI_AGENT_TOOL_TIMEOUT": "2",
        "HOME": os.environ.get("HOME", "/tmp"),
        "PYTHONPATH": str(ROOT),
        **(extra_env or {}),
    }
    return subprocess.run(
        [sys.executable, "-m", "providers.agent.cli", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=60,
        check=False,
    )


def test_cli_detect_json_via_subprocess(fake_bin: FakeBin) -> None:
    fake_bin.tool("npu-smi", {"info": "npu-smi-910b.txt"})
    fake_bin.tool("cnmon", {"info": (1, "cnmon: driver not loaded")})

    proc = _cli(["detect", "--json"], str(fake_bin.root))

    assert proc.returncode == 0, proc.stderr
    inv = json.loads(proc.stdout)
    assert set(inv) == {"host", "devices", "software"}
    assert set(inv["host"]) == {"cpu_model", "cpu_cores", "memory_mib", "disk_gib", "nics"}
    assert {tuple(sorted(d)) for d in inv["devices"]} == {
        ("bus_id", "index", "memory_mib", "model", "uuid", "vendor")
    }
    assert [d["model"] for d in inv["devices"]] == ["910B1"] * 4
    assert "cnmon info exited with status 1" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_cli_detect_table_via_subprocess(fake_bin: FakeBin) -> None:
    _nvidia(fake_bin)

    proc = _cli(["detect"], str(fake_bin.root))

    assert proc.returncode == 0, proc.stderr
    assert "NVIDIA H100 80GB HBM3" in proc.stdout
    assert "cuda 12.4" in proc.stdout
