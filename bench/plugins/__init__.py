"""The benchmark workloads as plugins (``python -m bench.loadgen --plugin-dir bench/plugins``).

Each file is one plugin; the runner imports them by path like any plugin
directory, so this package needs no imports of its own. They are not bundled:
they exist to measure the runner, see bench/README.md.
"""
