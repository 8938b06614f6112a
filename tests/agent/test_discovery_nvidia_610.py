"""NVIDIA driver 610 renamed the version lines (issue #11, item 16).

`nvidia-smi --version` prints `KMD version` and `CUDA UMD version` (the old `DRIVER version` and
`CUDA version` lines marked deprecated); the table header prints only `KMD Version` and
`CUDA UMD Version`. The agent must report the CUDA version from either output.
"""

from __future__ import annotations

import pytest

from providers.agent.discovery import detect
from providers.agent.discovery.nvidia import parse_cuda_version, parse_driver_version
from tests.agent.fakes import GOLDEN, NVIDIA_QUERY, FakeBin


def _nvidia_610(fake_bin: FakeBin, version: str | tuple[int, str] = "nvidia-smi-version-610.txt") -> None:
    fake_bin.tool(
        "nvidia-smi",
        {NVIDIA_QUERY: "nvidia-smi-query-610.csv", "--version": version, "": "nvidia-smi-610.txt"},
    )


def test_cuda_umd_version_from_the_version_output_of_driver_610(fake_bin: FakeBin) -> None:
    _nvidia_610(fake_bin)

    inv = detect().to_json()

    assert [(d["model"], d["memory_mib"], d["bus_id"]) for d in inv["devices"]] == [
        ("NVIDIA B200", 183359, "0000:63:00.0"),
        ("NVIDIA B200", 183359, "0000:68:00.0"),
    ]
    assert inv["software"] == {"cuda": "13.3", "driver": "610.43.02"}


def test_cuda_umd_version_from_the_table_header_when_the_version_flag_fails(
    fake_bin: FakeBin, capsys: pytest.CaptureFixture[str]
) -> None:
    _nvidia_610(fake_bin, version=(6, "Invalid combination of input arguments"))

    inv = detect().to_json()

    assert inv["software"] == {"cuda": "13.3", "driver": "610.43.02"}
    assert "nvidia-smi --version exited with status 6" in capsys.readouterr().err


def test_driver_from_kmd_version_when_the_query_has_no_driver_column(fake_bin: FakeBin, tmp_path) -> None:
    # An older query spelling without driver_version: the driver comes from `--version`.
    csv = tmp_path / "query.csv"
    csv.write_text(
        "\n".join(
            line.rsplit(",", 1)[0] for line in (GOLDEN / "nvidia-smi-query-610.csv").read_text().splitlines()
        )
        + "\n"
    )
    fake_bin.tool("nvidia-smi", {NVIDIA_QUERY: str(csv), "--version": "nvidia-smi-version-610.txt"})

    assert detect().to_json()["software"] == {"cuda": "13.3", "driver": "610.43.02"}


@pytest.mark.parametrize(
    ("text", "cuda", "driver"),
    [
        ((GOLDEN / "nvidia-smi-version-610.txt").read_text(), "13.3", "610.43.02"),
        ((GOLDEN / "nvidia-smi-610.txt").read_text(), "13.3", "610.43.02"),
        ((GOLDEN / "nvidia-smi-version.txt").read_text(), "12.4", "550.54.15"),
        ((GOLDEN / "nvidia-smi.txt").read_text(), "12.4", "550.54.15"),
        ((GOLDEN / "nvidia-smi-version-580-real.txt").read_text(), "13.0", "580.159.04"),
        # The new name wins over a deprecated line that says something else (or nothing).
        ("CUDA version        : N/A [Deprecated]\nCUDA UMD version    : 13.3\n", "13.3", None),
        (
            "CUDA Version: 13.2\nCUDA UMD Version: 13.3\nKMD Version: 610.1\nDriver Version: 600.2",
            "13.3",
            "610.1",
        ),
        ("| NVIDIA-SMI 610.43.02   KMD Version: 610.43.02   CUDA UMD Version: 13.3 |", "13.3", "610.43.02"),
        ("NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver.", None, None),
    ],
)
def test_version_spellings(text: str, cuda: str | None, driver: str | None) -> None:
    assert parse_cuda_version(text) == cuda
    assert parse_driver_version(text) == driver
