"""Without redis-cli (redis-tools) or redis-sentinel on PATH, the Cluster and
Sentinel tests of redis-limit are skipped with the reason, not failed."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from redis_topologies import missing

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]


def test_missing_names_the_packages(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    assert missing("redis-server", "redis-cli", "redis-sentinel") == (
        "redis-server, redis-cli, redis-sentinel not installed "
        "(apt-get install redis-server redis-tools redis-sentinel)"
    )
    assert missing() is None


def test_cluster_and_sentinel_tests_skip_with_the_reason(tmp_path: Path) -> None:
    """pytest in a subprocess whose PATH has redis-server and Python only."""
    server = shutil.which("redis-server")
    if server is None:
        pytest.skip("redis-server is not installed (apt-get install redis-server)")
    (tmp_path / "redis-server").symlink_to(server)
    (tmp_path / "python").symlink_to(sys.executable)
    tests = ("test_cluster_exact_across_two_workers_and_three_masters",
             "test_sentinel_master_killed_under_load")  # fmt: skip
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider",
         str(HERE / "test_redis_limit_topologies.py"), "-k", " or ".join(tests)],
        cwd=ROOT, env={**os.environ, "PATH": str(tmp_path)}, capture_output=True, text=True,
        timeout=120,
    )  # fmt: skip
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    assert "2 skipped" in out and "failed" not in out, out[-4000:]
    assert "redis-cli not installed (apt-get install redis-tools)" in out, out[-4000:]
    assert "redis-sentinel not installed (apt-get install redis-sentinel)" in out, out[-4000:]
