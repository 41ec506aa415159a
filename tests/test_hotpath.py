"""The installed build of the per-call path: all compiled or all pure, and the one asked for.

CI installs both builds and runs the whole suite on each, with
APISIX_RUNNER_EXPECT_BUILD saying which one it installed: a compile that
failed and fell back to pure Python would otherwise pass as "compiled".
"""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

from runner import hotpath

ROOT = Path(__file__).resolve().parent.parent


def test_the_build_is_whole() -> None:
    # A partial build (some modules compiled, some not) means a broken install.
    assert hotpath.build() in ("compiled", "pure"), hotpath.describe()


@pytest.mark.skipif("APISIX_RUNNER_EXPECT_BUILD" not in os.environ, reason="set by CI")
def test_the_build_is_the_one_installed() -> None:
    assert hotpath.build() == os.environ["APISIX_RUNNER_EXPECT_BUILD"], hotpath.describe()


def test_every_listed_module_exists_and_no_plugin_is_compiled() -> None:
    for path in [*hotpath.module_paths(), *hotpath.helper_paths()]:
        assert (ROOT / path).is_file(), path
    assert not any(m.startswith(("plugins", "runner.bundled_plugins")) for m in hotpath.MODULES)


def test_compiled_modules_are_extensions_of_the_listed_names() -> None:
    for name in hotpath.compiled_modules():
        module = importlib.import_module(name)
        assert module.__file__ is not None
        assert not module.__file__.endswith(".py")


def test_version_names_the_build() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "runner", "--version"], capture_output=True, text=True, check=True
    ).stdout
    assert hotpath.describe() in out


def test_setup_reads_the_module_list_without_importing_the_runner() -> None:
    # setup.py runs hotpath.py with runpy before any dependency is installed.
    code = (
        "import runpy, sys; ns = runpy.run_path('runner/hotpath.py'); "
        "assert 'runner' not in sys.modules; print(len(ns['module_paths']()))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert int(out.stdout) == len(hotpath.MODULES)


def test_asking_for_the_pure_build_removes_stale_compiled_modules(tmp_path: Path) -> None:
    # An earlier in-place build's extensions would shadow the .py files and
    # run compiled code in a "pure" install; setup.py removes them first.
    (tmp_path / "runner").mkdir()
    (tmp_path / "runner" / "hotpath.py").write_text((ROOT / "runner" / "hotpath.py").read_text())
    stale = []
    for path in [*hotpath.module_paths(), *hotpath.helper_paths()]:
        target = tmp_path / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text("")
        built = target.with_name(target.stem + ".cpython-311-x86_64-linux-gnu.so")
        built.write_bytes(b"stale")
        stale.append(built)
    group = tmp_path / "runner_hotpath__mypyc.cpython-311-x86_64-linux-gnu.so"
    group.write_bytes(b"stale")
    (tmp_path / "setup.py").write_text((ROOT / "setup.py").read_text())
    env = {**os.environ, hotpath.PURE_ENV: "1"}
    out = subprocess.run(
        [sys.executable, "setup.py", "--name"], cwd=tmp_path, env=env, capture_output=True,
        text=True, check=True,
    )  # fmt: skip
    assert "installing the pure-Python build" in out.stderr
    assert not any(p.exists() for p in [*stale, group])
    assert all((tmp_path / path).exists() for path in hotpath.module_paths())
