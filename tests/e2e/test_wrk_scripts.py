"""The wrk matrix's pieces: every scenario's routes do their work, and every
bench/wrk script runs against them without errors (1 s of wrk each)."""

from __future__ import annotations

import shutil
from collections.abc import Iterator

import pytest

from bench.gateway import matrix, rig

SCENARIOS = [
    s for s in matrix.SCENARIOS if not s.requires or (matrix.PLUGINS_DIR / s.requires).exists()
]


@pytest.fixture(scope="module")
def bench_gateway() -> Iterator[rig.Rig]:
    """The rig with the benchmark's own routes (bench/gateway/routes.yaml)."""
    gw = rig.start()
    try:
        yield gw
    finally:
        gw.stop()


@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda s: s.name)
def test_routes_do_the_work(bench_gateway: rig.Rig, scenario: matrix.Scenario) -> None:
    matrix.check_route(bench_gateway, scenario, scenario.lua_path)
    matrix.check_route(bench_gateway, scenario, scenario.py_path)


@pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk is not installed")
@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda s: s.name)
def test_wrk_script_runs_clean(bench_gateway: rig.Rig, scenario: matrix.Scenario) -> None:
    res = matrix.run_wrk(bench_gateway.url(scenario.py_path), scenario.script, 2, 1)
    assert res["requests"] > 0
    assert (res["errors"], res["non2xx"]) == (0, 0)


def test_routes_file_is_valid() -> None:
    routes = rig.load_routes(rig.DEFAULT_ROUTES)
    uris = {r.uri for r in routes.routes}
    for s in matrix.SCENARIOS:
        assert s.lua_path.split("?")[0] in uris
        assert s.py_path.split("?")[0] in uris


def test_bad_routes_are_rejected() -> None:
    with pytest.raises(rig.RigError, match="uri"):
        rig.load_routes({"routes": [{"uri": "no-slash"}]})
    with pytest.raises(rig.RigError, match="ext-plugin-pre-reqq"):
        rig.load_routes({"routes": [{"uri": "/x", "plugins": {"ext-plugin-pre-reqq": {}}}]})
