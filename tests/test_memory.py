"""physical_memory: the host's RAM, or a container's cgroup v2/v1 memory limit when lower."""

from __future__ import annotations

from pathlib import Path

import pytest

from xray.models import dataset as data

GIB = 2**30


@pytest.fixture
def host_16g(monkeypatch: pytest.MonkeyPatch) -> None:
    """Pretend the host has 16 GiB of RAM."""
    monkeypatch.setattr(data, "host_memory", lambda: 16 * GIB)


def write(root: Path, rel: str, text: str) -> Path:
    """Write a fake cgroup file under root."""
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_cgroup_v2_limit_below_the_host_ram_wins(tmp_path: Path, host_16g: None) -> None:
    write(tmp_path, "memory.max", f"{4 * GIB}\n")
    assert data.cgroup_memory_limit(tmp_path) == 4 * GIB
    assert data.physical_memory(tmp_path) == 4 * GIB


def test_cgroup_v2_max_means_unlimited(tmp_path: Path, host_16g: None) -> None:
    write(tmp_path, "memory.max", "max\n")
    assert data.cgroup_memory_limit(tmp_path) is None
    assert data.physical_memory(tmp_path) == 16 * GIB


def test_cgroup_v1_limit_and_its_unlimited_value(tmp_path: Path, host_16g: None) -> None:
    limit = write(tmp_path, "memory/memory.limit_in_bytes", f"{2 * GIB}\n")
    assert data.physical_memory(tmp_path) == 2 * GIB
    limit.write_text("9223372036854771712\n")  # v1's "no limit"
    assert data.physical_memory(tmp_path) == 16 * GIB


def test_limit_above_the_host_ram_is_capped(tmp_path: Path, host_16g: None) -> None:
    write(tmp_path, "memory.max", f"{64 * GIB}\n")
    assert data.physical_memory(tmp_path) == 16 * GIB


def test_no_cgroup_files_or_garbage_falls_back_to_the_host(
    tmp_path: Path, host_16g: None, caplog: pytest.LogCaptureFixture
) -> None:
    assert data.physical_memory(tmp_path / "absent") == 16 * GIB
    write(tmp_path, "memory.max", "lots\n")
    assert data.physical_memory(tmp_path) == 16 * GIB
    assert "unreadable memory limit" in caplog.text


def test_auto_cache_budget_follows_the_container_limit(
    tmp_path: Path, host_16g: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    write(tmp_path, "memory.max", f"{4 * GIB}\n")
    monkeypatch.setattr(data, "CGROUP_ROOT", tmp_path)
    # a quarter of 4 GiB is the budget, not a quarter of the host's 16 GiB
    assert data.cache_in_files("auto", 2 * GIB)
    assert not data.cache_in_files("auto", GIB - 1)


def test_real_machine_reports_a_positive_amount() -> None:
    assert 0 < data.physical_memory() <= data.host_memory()
