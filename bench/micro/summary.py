"""The micro-benchmarks as one Markdown table: runner against the flatc
baseline, group by group, with the speed-up.

    .venv/bin/pytest bench/micro --benchmark-only --benchmark-json=/tmp/micro.json
    .venv/bin/python -m bench.micro.summary /tmp/micro.json
"""

from __future__ import annotations

import json
import sys
from typing import Any


def _impl(bench: dict[str, Any]) -> str:
    return str(bench["params"]["impl"])


def table(data: dict[str, Any]) -> str:
    groups: dict[str, dict[str, float]] = {}
    for bench in data["benchmarks"]:
        groups.setdefault(bench["group"], {})[_impl(bench)] = bench["stats"]["median"]
    lines = [
        "| job | runner (median) | flatc baseline (median) | speed-up |",
        "|---|---|---|---|",
    ]
    for group, by_impl in groups.items():
        ours, theirs = by_impl.get("runner"), by_impl.get("flatc")
        ratio = f"{theirs / ours:.1f}x" if ours and theirs else "n/a"
        lines.append(f"| {group} | {_us(ours)} | {_us(theirs)} | {ratio} |")
    return "\n".join(lines)


def _us(seconds: float | None) -> str:
    return "n/a" if seconds is None else f"{seconds * 1e6:.2f} us"


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print(__doc__, file=sys.stderr)
        return 2
    with open(args[0]) as f:
        print(table(json.load(f)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
