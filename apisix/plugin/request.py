"""``from apisix.plugin.request import Request`` (see runner.compat.guide)."""

from runner.compat.guide import Request

__all__ = ["Request"]
