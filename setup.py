"""Build: the per-call path compiled with mypyc where this machine can, pure Python where not.

Everything else about the package is in pyproject.toml. The modules compiled
are listed in runner/hotpath.py. Any failure to compile (no C compiler, no
Python headers, mypyc refusing a module) leaves a working pure-Python
install, and ``apisix-runner --version`` says which build is installed.
``APISIX_RUNNER_PURE_PYTHON=1 pip install ...`` asks for the pure build.
"""

from __future__ import annotations

import glob
import os
import runpy
import sys
from typing import Any

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

HOTPATH = runpy.run_path(os.path.join("runner", "hotpath.py"))
GROUP = "runner_hotpath"  # the shared library: runner_hotpath__mypyc.<abi>.so


# mypyc emits one C file for the whole group, its functions and runtime
# included, but none of them static: under -fPIC, each call from one to
# another goes through the PLT and none is inlined, since another library
# could interpose the symbol. Hidden, they are called directly and inlined
# where small (the modules export only PyInit_*, marked visible by Python.h;
# mypyc hands everything else over in capsules).
# runner/_cold.h declares mypyc's error reporters cold, so each function's
# error blocks move out of its hot body (see the header).
COLD_HEADER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "runner", "_cold.h")
LOCAL_CALLS = ["-fvisibility=hidden", "-include", COLD_HEADER]
# No padding before functions, loops and jump targets. A call runs through
# more distinct code (~80 KiB: the interpreter, uvloop, libc, these modules)
# than a core's first-level instruction cache holds (32-64 KiB), so each line
# of padding in the hot path is one more line fetched again on every call;
# packed, the call misses that cache ~7% less (callgrind's cache model).
PACKED = ["-falign-functions=1", "-falign-jumps=1", "-falign-loops=1", "-falign-labels=1"]


def note(message: str) -> None:
    print(f"apisix-runner build: {message}", file=sys.stderr)


def remove_stale_builds() -> None:
    """Extensions an earlier in-place build left would shadow the .py files."""
    for path in [*HOTPATH["module_paths"](), *HOTPATH["helper_paths"]()]:
        for built in glob.glob(os.path.splitext(path)[0] + ".*.so"):
            os.remove(built)
    for built in glob.glob(f"{GROUP}__mypyc.*.so"):
        os.remove(built)


class OptionalBuildExt(build_ext):
    """All the compiled modules or none: one that failed to build would leave
    the others importing a shared library that is not there."""

    def run(self) -> None:
        try:
            super().run()
        except Exception as exc:  # CompileError, LinkError, no compiler at all
            note(f"compiling the hot path failed ({exc}); installing the pure-Python build")
            for ext in self.extensions:
                for path in (self.get_ext_fullpath(ext.name), self.get_ext_filename(ext.name)):
                    if os.path.exists(path):
                        os.remove(path)
            self.extensions = []
            remove_stale_builds()

    def get_outputs(self) -> list[str]:
        return [path for path in super().get_outputs() if os.path.exists(path)]


def compiled_extensions() -> list[Any]:
    if os.environ.get(HOTPATH["PURE_ENV"], "") not in ("", "0"):
        note(f"{HOTPATH['PURE_ENV']} is set: installing the pure-Python build")
        remove_stale_builds()
        return []
    try:
        from mypyc.build import mypycify
    except ImportError:
        note("mypyc is not installed: installing the pure-Python build")
        return []
    try:
        # The runtime dependencies are not in the build environment: the
        # modules compiled use none of them, and what they import from the
        # rest of the runner is type-checked without its errors (CI runs
        # mypy --strict on everything).
        options = ["--ignore-missing-imports", "--follow-imports=silent"]
        helpers = [
            Extension(name, [path], extra_compile_args=["-O3"])
            for name, path in zip(HOTPATH["C_HELPERS"], HOTPATH["helper_paths"](), strict=True)
        ]
        compiled = mypycify(
            [*options, *HOTPATH["module_paths"]()],
            opt_level="3",
            debug_level="0",
            group_name=GROUP,
        )
        for ext in compiled:
            ext.extra_compile_args = [*ext.extra_compile_args, *LOCAL_CALLS, *PACKED]
        return [*compiled, *helpers]
    except (Exception, SystemExit) as exc:  # mypyc reports type errors by exiting
        note(f"mypyc could not compile the hot path ({exc!r}); installing the pure-Python build")
        remove_stale_builds()
        return []


setup(ext_modules=compiled_extensions(), cmdclass={"build_ext": OptionalBuildExt})
