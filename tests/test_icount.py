"""bench.micro.icount: callgrind_annotate's output read per function, per call."""

from __future__ import annotations

from bench.micro.icount import parse_annotate, per_call

ANNOTATE = """\
--------------------------------------------------------------------------------
Ir                     file:function
--------------------------------------------------------------------------------
2,200,509,653 (100.0%)  PROGRAM TOTALS
143,568,322 ( 6.52%)  /tmp/build/Python/ceval.c:_PyEval_EvalFrameDefault'2 [/lib/libpython3.11.so]
 29,458,000 ( 1.34%)  ???:CPyDef_fb___text_vector_chunks [/work/runner_hotpath__mypyc.so]
"""


def test_annotate_lines_become_costs_by_short_name() -> None:
    costs = parse_annotate(ANNOTATE)
    assert costs == {
        "PROGRAM TOTALS": 2_200_509_653,
        "ceval.c:_PyEval_EvalFrameDefault'2": 143_568_322,
        "???:CPyDef_fb___text_vector_chunks": 29_458_000,
    }


def test_per_call_is_the_difference_of_two_runs_over_the_extra_calls() -> None:
    small = {"PROGRAM TOTALS": 1_000_000, "f": 100_000}
    large = {"PROGRAM TOTALS": 1_500_000, "f": 300_000, "g": 50_000}
    assert per_call(small, large, 100) == {"PROGRAM TOTALS": 5000.0, "f": 2000.0, "g": 500.0}
