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
-- Auto-annotated source: runner/proto/_textvec.c
 72,000 ( 0.01%)              if (emit(v, name, NO_VALUE, NULL) < 0) {
10,320,000 ( 0.85%)  => runner/proto/_textvec.c:emit (72,000x)
"""


def test_annotate_lines_become_costs_by_short_name() -> None:
    # The source line and the cost of the calls made from it are left out.
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


def test_the_suite_measures_the_judged_workloads_and_their_floors() -> None:
    from bench.micro.icount import suite_workloads

    assert suite_workloads() == ["stop", "rewrite", "var-stop", "noop3", "floor-stop", "floor-var"]


def test_suite_rows_judge_each_workload_against_its_floor() -> None:
    from bench.micro.icount import suite_rows

    counts = {"stop": 1150.0, "rewrite": 1700.0, "var-stop": 2000.0, "noop3": 1100.0,
              "floor-stop": 1000.0, "floor-var": 2000.0}  # fmt: skip
    rows = suite_rows(counts)
    assert rows[2] == "| stop | 1,150 | floor-stop 1,000 | 1.15x | <= 1.15x | pass |"
    assert rows[3] == "| rewrite | 1,700 | floor-stop 1,000 | 1.70x | <= 1.6x | **MISS** |"
    assert rows[4].endswith("| 1.00x | <= 1.15x | pass |")
    assert rows[5].startswith("| noop3 | 1,100 |")


def test_the_command_line_takes_suite_alone_and_refuses_unknown_names() -> None:
    import pytest

    from bench.micro import icount

    for argv in (["nope"], []):
        with pytest.raises(SystemExit):
            icount.main(argv)
