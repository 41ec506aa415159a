"""Without wrk on PATH the tests that drive load with it are skipped with the
reason, not failed."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
REASON = "wrk is not installed (apt-get install wrk)"


def test_wrk_tests_skip_with_the_reason(tmp_path: Path) -> None:
    env = {**os.environ, "PATH": str(tmp_path)}  # an empty directory: no wrk
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider",
         str(HERE / "test_reload.py"), str(HERE / "test_wrk_scripts.py"),
         "-k", "sighup or runs_clean"],
        cwd=HERE.parents[1], env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    assert " skipped" in out and "passed" not in out and "failed" not in out, out[-4000:]
    assert REASON in out and "wrk is not installed" in out, out[-4000:]
