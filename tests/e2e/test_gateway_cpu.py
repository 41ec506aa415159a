"""bench.gateway.cpu end to end, shortened: one 1 s round of `stop`, ours and the
bare-loop reference on the rig's runner socket, both rows in the table with a
positive runner CPU per request (the long run is ``python -m bench.gateway.cpu``)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from bench.gateway import cpu

from .conftest import wrk_missing

pytestmark = pytest.mark.skipif(
    wrk_missing() is not None, reason=f"this test drives load with wrk: {wrk_missing()}"
)
_ROW = re.compile(r"^\| stop \| (ours|bare-loop reference) \| ([^|]+) \| ([0-9.]+) \|", re.M)


def test_table_has_both_runners(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    out_json = tmp_path / "cpu.json"
    argv = ["--duration", "1", "--rounds", "1", "--scenario", "stop", "--json", str(out_json)]
    assert cpu.main(argv) == 0
    out = capsys.readouterr().out
    rows = {m.group(1): float(m.group(3)) for m in _ROW.finditer(out)}
    assert set(rows) == {"ours", "bare-loop reference"}, out
    assert all(us > 0 for us in rows.values()), out
    assert "<= 1.3x" in out, out
    runs = json.loads(out_json.read_text())["runs"]
    assert {r["runner"] for r in runs} == {"ours", "reference"}
    assert all(r["requests"] > 0 and r["runner_cpu_s"] > 0 for r in runs), runs
    ours = next(r for r in runs if r["runner"] == "ours")
    assert (ours["non2xx"], ours["errors"]) == (0, 0), ours


def test_header_rewrite_reference_answers_from_a_template(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """On the header-rewrite route the reference answers the route's own Rewrite
    (checked like ours: the upstream sees the headers), so both are proxied."""
    out_json = tmp_path / "cpu.json"
    argv = ["--duration", "1", "--rounds", "1", "--scenario", "header-rewrite",
            "--json", str(out_json)]  # fmt: skip
    assert cpu.main(argv) == 0
    runs = json.loads(out_json.read_text())["runs"]
    assert {r["runner"] for r in runs} == {"ours", "reference"}
    for run in runs:
        assert run["requests"] > 0 and (run["non2xx"], run["errors"]) == (0, 0), run
