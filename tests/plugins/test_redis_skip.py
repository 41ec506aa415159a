"""Without redis-server on PATH the redis tests are skipped with the reason,
not failed (as the end-to-end tests are without nginx)."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
REASON = "redis-server is not installed (apt-get install redis-server)"


def _conftest() -> ModuleType:
    """This directory's conftest, loaded afresh (pytest owns the copy it imported)."""
    spec = importlib.util.spec_from_file_location("redis_conftest", HERE / "conftest.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_redis_missing_names_the_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    conftest = _conftest()
    monkeypatch.setenv("PATH", str(tmp_path))  # an empty directory: no redis-server
    assert conftest.redis_missing() == REASON
    with pytest.raises(pytest.skip.Exception, match="apt-get install redis-server"):
        conftest.skip_without_redis()
    fake = tmp_path / "redis-server"
    fake.write_text("#!/bin/sh\n")
    fake.chmod(0o755)
    assert conftest.redis_missing() is None


def test_redis_tests_skip_with_the_reason(tmp_path: Path) -> None:
    """The real thing: pytest in a subprocess whose PATH has no redis-server."""
    tests = (
        "test_limit_headers_and_retry_after",  # the session's redis_server
        "test_redis_killed_and_restarted",  # redis_factory
    )
    env = {**os.environ, "PATH": str(tmp_path)}
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider",
         str(HERE / "test_redis_limit.py"), "-k", " or ".join(tests)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    assert "2 skipped" in out and "failed" not in out and "error" not in out, out[-4000:]
    assert REASON in out, out[-4000:]
