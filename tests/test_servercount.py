"""bench.micro.servercount: calls counted from a callgrind output file."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.micro import servercount
from bench.micro.servercount import WRITE, Count, call_counts

# A callgrind output file: a function's name is written once, then only its
# "(id)"; a call's count follows the callee's cfn= line.
CALLGRIND = """\
version: 1
creator: callgrind-3.19.0
events: Ir
fl=(1) loop.c
fn=(1) uv__write
0 10
cob=(2) /usr/lib/x86_64-linux-gnu/libc.so.6
cfi=(3) write.c
cfn=(2) __GI___libc_write
calls=3 0
0 30
cfn=(2)
calls=2 0
0 20
fn=(3) uv__writev
0 5
cfn=(4) writev
calls=4 0
0 1
fn=(2)
0 40
cfn=(5) write
calls=1 0
0 7
"""


def test_calls_are_counted_from_every_caller_by_the_callee_name(tmp_path: Path) -> None:
    path = tmp_path / "cg.1.1"
    path.write_text(CALLGRIND)
    # 3 + 2 from uv__write (the second by id alone), 1 from libc's own
    # wrapper; writev is another function.
    assert call_counts(path, WRITE) == 6


def test_per_call_divides_the_window_by_its_calls() -> None:
    assert Count("stop", 400, 4_000_000).per_call == 10_000.0


def test_the_suite_counts_the_judged_workloads_and_their_floors() -> None:
    assert servercount.suite_workloads() == [
        "stop", "rewrite", "var-stop", "noop3", "floor-stop", "floor-var",
    ]  # fmt: skip


@pytest.mark.parametrize("argv", [["nope"], []])
def test_the_command_line_refuses_unknown_or_no_workloads(argv: list[str]) -> None:
    with pytest.raises(SystemExit):
        servercount.main(argv)


ANNOTATE = """\
Events shown:     Ir I1mr D1mr
Event sort order: Ir
--------------------------------------------------------------------------------
1,000 (100.0%) 40 (100.0%) 7 (100.0%)  PROGRAM TOTALS
"""


def test_program_totals_reads_every_event() -> None:
    assert servercount.program_totals(ANNOTATE) == {"Ir": 1000, "I1mr": 40, "D1mr": 7}
    with pytest.raises(ValueError):
        servercount.program_totals("Events shown: Ir\n")


# --dump-instr=yes: positions are instruction addresses (then a line number),
# absolute, relative (+n/-n) or the same (*); a call's inclusive cost follows
# its calls= line and is not the caller's own.
DUMP_INSTR = """\
version: 1
positions: instr line
events: Ir
ob=(1) /usr/lib/libpython3.11.so.1.0
fl=(1) ceval.c
fn=(1) eval
0x1000 10 200
+4 * 200
+60 * 200
cob=(2) /work/runner_hotpath.so
cfn=(2) hot
calls=100 0x2000 5
+128 * 9000
-124 * 100
ob=(2)
fn=(2) hot
0x2000 5 100
0x2040 6 50
0x3000 7 1000000
"""


def test_hot_code_counts_lines_run_once_per_call_by_object(tmp_path: Path) -> None:
    path = tmp_path / "cg.1.1"
    path.write_text(DUMP_INSTR)
    # libpython: 0x1000 and 0x1004 share a line, 0x1040 is the next; the
    # call's 9000 (at 0x10c0, a line of its own) is the callee's, and 0x1044
    # adds 100 to 0x1040's line.
    # The .so: 0x2000 (100) and 0x3000; 0x2040 ran 50 times in 100 calls.
    assert servercount.hot_code(path, 100) == {"libpython3.11.so.1.0": 2, "runner_hotpath.so": 2}
    assert servercount.hot_code(path, 300) == {"libpython3.11.so.1.0": 2, "runner_hotpath.so": 1}


def test_describe_shows_misses_and_code_where_counted() -> None:
    plain = Count("stop", 10, 1000, {"Ir": 1000})
    assert servercount.describe(plain) == []
    full = Count("stop", 10, 1000, {"Ir": 1000, "I1mr": 50, "D1mr": 20, "D1mw": 10}, {"a.so": 16})
    lines = servercount.describe(full)
    assert lines[0] == "  cache misses per call: I1mr 5, D1mr 2, D1mw 1"
    assert lines[1] == "  code run through per call: 1.0 KiB"
    assert lines[2].split() == ["1.0", "KiB", "a.so"]
