"""``from apisix.plugin.response import Response`` (see runner.compat.guide)."""

from runner.compat.guide import Response

__all__ = ["Response"]
