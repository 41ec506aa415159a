"""Plugins bundled with the runner (installed as ``runner.bundled_plugins``).

Each file is one plugin; the runner imports them by path, so this package
needs no imports of its own.
"""
