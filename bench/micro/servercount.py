"""Instructions per call of the real server: a worker under load, under callgrind.

``bench.micro.icount`` counts the in-process harness, whose own Python (a
fake transport, the loop's plumbing) is in both rows of every ratio; for a
workload that waits on ExtraInfo, that share is large enough to hide a gap.
This counts the real thing instead: ``python -m runner start --workers 1``
(or the bare-loop floor, ``bench.fake_runner``) under ``valgrind
--tool=callgrind``, loaded by the load generator over its Unix socket, with
instrumentation switched on only for a window in the middle of the run.
Every instruction the worker process executes in user space in that window
counts: uvloop, the runner, the interpreter, libc, the watchdog thread.

Calls are counted from the worker's own ``write`` calls: each call writes
its reply plus one frame per ExtraInfo question (one ``write`` per frame,
as uvloop writes each frame at once when the socket takes it).

    python -m bench.micro.servercount WORKLOAD [WORKLOAD ...] [--window 6]
    python -m bench.micro.servercount --suite   # the target table, in instructions
    python -m bench.micro.servercount --cache WORKLOAD ...  # + cache misses per call
    python -m bench.micro.servercount --code WORKLOAD ...   # + the code a call runs through

``--cache`` runs callgrind's cache model (the machine's cache sizes) and adds
first-level instruction and data cache misses per call. ``--code`` adds the
code a call runs through: the distinct 64-byte lines of machine code executed
on average at least once per call, by shared object. Where that is more than
the core's first-level instruction cache holds (``lscpu``: L1i), each call
fetches much of it again, and an instruction costs more than the bare loop's,
whose whole path fits: what the instruction count leaves out.

The workloads are the load generator's (bench/loadgen.py) and its floors
(``floor-stop``, ``floor-var``). Under valgrind the worker runs ~50 times
slower, so the load generator keeps it saturated with 16 connections; what
the count leaves out is the kernel's share (the socket I/O) and everything
that makes one instruction cost more than another (cache misses).
"""

from __future__ import annotations

import argparse
import contextlib
import re
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from bench import loadgen
from bench.micro.icount import check_workloads, suite_rows, valgrind_missing

FLOOR_VARS = {"floor-stop": None, "floor-var": "remote_addr"}
# ExtraInfo questions per call: each is one more frame the worker writes.
QUESTIONS = {"var-stop": 1, "floor-var": 1}
WRITE = re.compile(r"^(__GI___libc_write|write|__libc_write)$")


@dataclass(frozen=True)
class Count:
    workload: str
    calls: int
    instructions: int
    # Callgrind's totals by event (Ir, and I1mr, D1mr... with --cache).
    events: dict[str, int] = field(default_factory=dict)
    # Hot code lines (see hot_code) by shared object, with --code.
    code: dict[str, int] = field(default_factory=dict)

    @property
    def per_call(self) -> float:
        return self.instructions / self.calls


def call_counts(path: Path, wanted: re.Pattern[str]) -> int:
    """How many calls a callgrind output file records to functions whose
    name matches ``wanted`` (from every caller; names are compressed to
    ``(id)`` after their first use, which this resolves)."""
    names: dict[str, str] = {}
    total = 0
    target: str | None = None
    for line in path.read_text().splitlines():
        m = re.match(r"c?fn=\((\d+)\)(?: (.*))?$", line)
        if m:
            if m.group(2):
                names[m.group(1)] = m.group(2)
            target = names.get(m.group(1), "") if line.startswith("cfn=") else None
        elif line.startswith("calls=") and target is not None:
            if wanted.match(target):
                total += int(line[6:].split()[0])
            target = None
    return total


def total_instructions(path: Path) -> int:
    return program_totals(_annotate(path))["Ir"]


def _annotate(path: Path) -> str:
    argv = ["callgrind_annotate", "--threshold=100", "--auto=no", str(path)]
    return subprocess.run(argv, check=True, capture_output=True, text=True).stdout


def program_totals(text: str) -> dict[str, int]:
    """Every event's total from callgrind_annotate's output."""
    events: list[str] = []
    for line in text.splitlines():
        if line.startswith("Events shown:"):
            events = line.split(":", 1)[1].split()
        elif line.rstrip().endswith("PROGRAM TOTALS") and events:
            numbers = re.findall(r"([\d,]+) \(", line)
            return {e: int(n.replace(",", "")) for e, n in zip(events, numbers, strict=True)}
    raise ValueError("no PROGRAM TOTALS line in callgrind_annotate's output")


_POSITION = re.compile(r"^(0x[0-9a-fA-F]+|[+-]\d+|\*)\s")
_NAMED = re.compile(r"^c?ob=\((\d+)\)(?: (.*))?$")


def hot_code(path: Path, calls: int) -> dict[str, int]:
    """The 64-byte lines of machine code executed on average at least once
    per call, counted by shared object (its file name), from a callgrind
    output file written with ``--dump-instr=yes``.

    A cost line starts with the instruction's address: absolute (0x...),
    relative to the line before (+n, -n) or the same (*). The line after a
    ``calls=`` line is the call's inclusive cost at the call site: it moves
    the position but is not this function's own."""
    names: dict[str, str] = {}
    ir: dict[tuple[str, int], int] = {}
    obj, address, call_cost = "?", 0, False
    with path.open() as lines:
        for line in lines:
            m = _POSITION.match(line)
            if m:
                pos = m.group(1)
                address = int(pos, 16) if pos.startswith("0x") else address + (
                    0 if pos == "*" else int(pos)
                )  # fmt: skip
                if call_cost:
                    call_cost = False
                    continue
                fields = line.split()
                if len(fields) > 2 and fields[2].isdigit():
                    key = (obj, address >> 6)
                    ir[key] = ir.get(key, 0) + int(fields[2])
                continue
            named = _NAMED.match(line.rstrip("\n"))
            if named:
                if named.group(2):
                    names[named.group(1)] = named.group(2)
                if line.startswith("ob="):
                    obj = named.group(1)
            elif line.startswith("calls="):
                call_cost = True
    out: dict[str, int] = {}
    for (ob, _line), cost in ir.items():
        if cost >= calls:
            name = names.get(ob, "?").rsplit("/", 1)[-1]
            out[name] = out.get(name, 0) + 1
    return out


@contextlib.contextmanager
def _server(
    workload: str, tmp: str, options: tuple[str, ...] = ()
) -> Iterator[tuple[str, int, int]]:
    """The runner (or the floor) under callgrind (with ``options`` too), its
    dumps in ``tmp``: (socket, root pid, worker pid)."""
    vg = ("valgrind", "--tool=callgrind", *options, "--trace-children=yes",
          "--instr-atstart=no", f"--callgrind-out-file={tmp}/cg.%p")  # fmt: skip
    if workload in FLOOR_VARS:
        server = loadgen.fake_runner(FLOOR_VARS[workload], wrapper=vg)
    else:
        server = loadgen.managed_runner(1, (loadgen.BENCH_PLUGINS,), wrapper=vg)
    with server as (sock, root):
        time.sleep(1.0)  # the worker's own start-up, slow under valgrind
        worker = max(loadgen.descendants([root]))  # itself, for the floor
        yield sock, root, worker


def _window(worker: int, start: float, length: float) -> None:
    """Instrument ``worker`` for ``length`` seconds after ``start``, then dump."""
    time.sleep(start)
    control = ["callgrind_control"]
    subprocess.run([*control, "-i", "on", str(worker)], check=True, capture_output=True)
    time.sleep(length)
    subprocess.run([*control, "-d", str(worker)], check=True, capture_output=True)
    subprocess.run([*control, "-i", "off", str(worker)], check=True, capture_output=True)


def count(workload: str, window: float, cache: bool = False, code: bool = False) -> Count:
    """Instructions per call of ``workload`` (a load generator workload or a
    floor); with ``cache``, the cache model's events too; with ``code``, the
    code a call runs through (hot_code)."""
    options: tuple[str, ...] = ("--cache-sim=yes",) if cache else ()
    options += ("--dump-instr=yes",) if code else ()
    # A floor answers any route; it is loaded as the workload it is the floor of.
    spec = (
        loadgen.WORKLOADS.get(workload)
        or loadgen.WORKLOADS["var-stop" if workload == "floor-var" else "stop"]
    )
    with tempfile.TemporaryDirectory(prefix="servercount-") as tmp:
        with _server(workload, tmp, options) as (sock, root, worker):
            warmup = 2.0
            opts = loadgen.Options(
                socket=sock, pids=(root,), conf=spec.conf, connections=spec.connections,
                duration=window + 2.0, warmup=warmup, variables=loadgen.SUITE_VARS,
            )  # fmt: skip
            # The window opens once the clients are connected and warm.
            timer = threading.Thread(target=_window, args=(worker, warmup + 1.5, window))
            timer.start()
            loadgen.run(opts)
            timer.join()
        dump = Path(tmp, f"cg.{worker}.1")  # the window's (cg.<pid> is written at exit)
        if not dump.exists():
            raise RuntimeError(f"{workload}: callgrind wrote no dump for worker {worker}")
        writes = call_counts(dump, WRITE)
        calls = writes // (1 + QUESTIONS.get(workload, 0))
        if calls == 0:
            raise RuntimeError(f"{workload}: no call was answered in the window")
        events = program_totals(_annotate(dump))
        lines = hot_code(dump, calls) if code else {}
        return Count(workload, calls, events["Ir"], events, lines)


def describe(c: Count) -> list[str]:
    """The cache model's misses and the hot code of a count, where it has them."""
    out = []
    misses = [(e, c.events[e]) for e in ("I1mr", "D1mr", "D1mw") if e in c.events]
    if misses:
        out.append("  cache misses per call: " + ", ".join(
            f"{e} {n / c.calls:,.0f}" for e, n in misses
        ))  # fmt: skip
    if c.code:
        total = sum(c.code.values())
        out.append(f"  code run through per call: {total * 64 / 1024:,.1f} KiB")
        for name, n in sorted(c.code.items(), key=lambda kv: -kv[1]):
            out.append(f"    {n * 64 / 1024:6.1f} KiB  {name}")
    return out


def suite_workloads() -> list[str]:
    """The workloads the target table judges against a floor, then those floors."""
    targets = {n: w.floor_target for n, w in loadgen.WORKLOADS.items() if w.floor_target}
    return [*targets, *sorted({floor for floor, _ in targets.values()})]


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    known = sorted([*loadgen.WORKLOADS, *FLOOR_VARS])
    p.add_argument("workloads", nargs="*", metavar="WORKLOAD", help=", ".join(known))
    p.add_argument("--suite", action="store_true", help="the target table, in instructions")
    p.add_argument("--window", type=float, default=6.0, help="seconds instrumented per run")
    p.add_argument(
        "--cache", action="store_true", help="also cache misses per call (callgrind's model)"
    )
    p.add_argument(
        "--code", action="store_true", help="also the code a call runs through, by object"
    )
    a = p.parse_args(argv)
    check_workloads(p, a.workloads, a.suite, known)
    if valgrind_missing("callgrind_control"):
        return 2
    names = suite_workloads() if a.suite else list(a.workloads)
    counts: dict[str, float] = {}
    for name in names:
        c = count(name, a.window, a.cache, a.code)
        counts[name] = c.per_call
        print(f"{name}: {c.per_call:,.0f} instructions per call ({c.calls:,} calls counted)",
              flush=True)  # fmt: skip
        for line in describe(c):
            print(line, flush=True)
    if a.suite:
        print("\n".join(suite_rows(counts)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
