"""Instructions per call, and where they go: the hot path measured by valgrind.

Wall-clock and CPU-time figures on a shared machine drift by 10-40% within
minutes; an instruction count does not. This runs the in-process harness
(bench/micro/harness.py: a worker's Connection, a fake transport, the load
generator's realistic frame) under ``valgrind --tool=callgrind`` twice, with
N and 2N calls, and divides the difference by N: start-up, imports and
warm-up cancel out, and what is left is one call's instructions, in total
and per function (the compiled build's functions are its C symbols,
``CPyDef_<module>___<function>``).

    python -m bench.micro.icount WORKLOAD [WORKLOAD ...] [--calls 2000] [--top 25]
    python -m bench.micro.icount --suite    # the target table, in instructions

``--suite`` measures the load generator's target workloads and the bare-loop
floor rows, and judges each workload against its floor with the target
table's ratios (bench/loadgen.py): the same table as ``bench.loadgen
--suite``, without the kernel's share and without the machine's noise.

Needs valgrind (Debian: ``apt-get install valgrind``). An instruction is not a
nanosecond (cache misses and branch mispredictions cost more), but fewer
instructions for the same work is the direction a change must go.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from bench import loadgen
from bench.micro.harness import FLOORS, WORKLOADS

ROOT = Path(__file__).resolve().parents[2]
_LINE = re.compile(r"\s*([\d,]+) \([^)]*\)\s+(.*)$")


def _run(workload: str, calls: int, out: Path) -> None:
    argv = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", sys.executable,
            "-m", "bench.micro.harness", workload, "--calls", str(calls)]  # fmt: skip
    subprocess.run(argv, cwd=ROOT, check=True, capture_output=True)


def _costs(path: Path, inclusive: bool) -> dict[str, int]:
    """Instructions by function (``file:function`` shortened to its last part)."""
    argv = ["callgrind_annotate", f"--inclusive={'yes' if inclusive else 'no'}",
            "--threshold=100", "--auto=no", str(path)]  # fmt: skip
    text = subprocess.run(argv, check=True, capture_output=True, text=True).stdout
    return parse_annotate(text)


def parse_annotate(text: str) -> dict[str, int]:
    costs: dict[str, int] = {}
    for line in text.splitlines():
        # An annotated source's lines are not functions, and its "=> f (Nx)"
        # lines are the inclusive cost of calls: counted, they would be added
        # to f's self cost (_costs asks for none; this guards the parse).
        if line.startswith("-- Auto-annotated source"):
            break
        m = _LINE.match(line)
        if m:
            name = re.sub(r"\s*\[.*\]\s*$", "", m.group(2)).rsplit("/", 1)[-1]
            costs[name] = costs.get(name, 0) + int(m.group(1).replace(",", ""))
    return costs


def per_call(small: dict[str, int], large: dict[str, int], calls: int) -> dict[str, float]:
    """Each function's instructions per call: (2N-call run - N-call run) / N."""
    return {name: (large[name] - small.get(name, 0)) / calls for name in large}


def _table(costs: dict[str, float], top: int, title: str) -> list[str]:
    rows = sorted(((v, k) for k, v in costs.items() if k != "PROGRAM TOTALS"), reverse=True)
    lines = [f"  {title}:"]
    lines += [f"  {v:10,.0f}  {k[:100]}" for v, k in rows[:top] if v >= 1]
    return lines


def costs_per_call(
    workload: str, calls: int, inclusive: bool = True
) -> tuple[dict[str, float], dict[str, float]]:
    """(self, inclusive) instructions per call by function; the inclusive
    table is empty unless asked for."""
    # The harness's warm-up is min(calls, 2000), so with calls >= 2000 both
    # runs warm up alike and differ by exactly 5 x calls (it runs 5 rounds).
    with tempfile.TemporaryDirectory() as tmp:
        small, large = Path(tmp, "n"), Path(tmp, "2n")
        _run(workload, calls, small)
        _run(workload, 2 * calls, large)
        n = 5 * calls
        self_cost = per_call(_costs(small, False), _costs(large, False), n)
        if not inclusive:
            return self_cost, {}
        return self_cost, per_call(_costs(small, True), _costs(large, True), n)


def suite_rows(counts: dict[str, float]) -> list[str]:
    """The target table from instruction counts: each judged workload
    against its floor row, with the load generator's ratio."""
    lines = ["| workload | instructions per call | floor | ratio | target | result |",
             "|---|---|---|---|---|---|"]  # fmt: skip
    for name, w in loadgen.WORKLOADS.items():
        if w.floor_target is None or name not in counts:
            continue
        floor, limit = w.floor_target
        ratio = counts[name] / counts[floor]
        verdict = "pass" if ratio <= limit else "**MISS**"
        lines.append(f"| {name} | {counts[name]:,.0f} | {floor} {counts[floor]:,.0f} | "
                     f"{ratio:.2f}x | <= {limit}x | {verdict} |")  # fmt: skip
    return lines


def suite_workloads() -> list[str]:
    """The judged workloads of the target table, then the floors they need."""
    judged = [n for n, w in loadgen.WORKLOADS.items() if w.floor_target and n in WORKLOADS]
    floors = sorted({w.floor_target[0] for n, w in loadgen.WORKLOADS.items()
                     if w.floor_target and n in judged})  # fmt: skip
    return judged + floors


def measure(workload: str, calls: int, top: int) -> list[str]:
    self_cost, inclusive = costs_per_call(workload, calls)
    lines = [f"{workload}: {self_cost['PROGRAM TOTALS']:,.0f} instructions per call"]
    # Inclusive costs of the interpreter's frames say nothing (everything runs
    # under them); the compiled build's functions are what a tree shows.
    compiled = {k: v for k, v in inclusive.items() if "CPyDef_" in k}
    if compiled:
        lines += _table(compiled, top, "compiled functions, inclusive (with what they call)")
    lines += _table(self_cost, top, "self (the function's own instructions)")
    return lines


def check_workloads(
    p: argparse.ArgumentParser, workloads: list[str], suite: bool, known: list[str]
) -> None:
    """Exit with a usage error unless the command line names known workloads or --suite."""
    if not suite and not workloads:
        p.error("name at least one WORKLOAD, or --suite")
    if unknown := sorted(set(workloads) - set(known)):
        p.error(f"unknown workloads {unknown}; known: {', '.join(known)}")


def valgrind_missing(tool: str) -> bool:
    """Say so on stderr if valgrind or its ``tool`` is not installed."""
    if shutil.which("valgrind") is None or shutil.which(tool) is None:
        print("valgrind is not installed (apt-get install valgrind)", file=sys.stderr)
        return True
    return False


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    known = sorted([*WORKLOADS, *FLOORS])
    # No choices=: argparse checks an empty "*" list against them (Python 3.11).
    p.add_argument("workloads", nargs="*", metavar="WORKLOAD", help=", ".join(known))
    p.add_argument("--suite", action="store_true", help="the target table, in instructions")
    p.add_argument("--calls", type=int, default=2000, help="N (at least 2000)")
    p.add_argument("--top", type=int, default=25, help="functions shown per table")
    a = p.parse_args(argv)
    if a.calls < 2000:
        p.error("--calls must be at least 2000 (the harness warms up with 2000 calls)")
    check_workloads(p, a.workloads, a.suite, known)
    if valgrind_missing("callgrind_annotate"):
        return 2
    os.environ.setdefault("PYTHONHASHSEED", "0")  # the same dict layouts in both runs
    if a.suite:
        counts: dict[str, float] = {}
        for workload in suite_workloads():
            counts[workload] = costs_per_call(workload, a.calls, False)[0]["PROGRAM TOTALS"]
            print(f"{workload}: {counts[workload]:,.0f} instructions per call", flush=True)
        print("\n".join(suite_rows(counts)))
        return 0
    for workload in a.workloads:
        print("\n".join(measure(workload, a.calls, a.top)), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
