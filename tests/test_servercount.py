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
