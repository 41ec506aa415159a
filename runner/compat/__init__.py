"""Other plugin APIs, each an adapter onto :mod:`runner.api`: plugins written
for them load unchanged. ``legacy``: the old official Python runner's
``PluginBase`` (0.2). May import ``runner.api`` and below, never ``runner.server``.
"""

from __future__ import annotations

from runner.api.discovery import Adapter
from runner.compat import legacy
from runner.compat.legacy import wrap

#: Every adapter, in the order discovery asks them; the server and the test kit
#: pass this to ``load_plugins``.
ADAPTERS: tuple[Adapter, ...] = (legacy,)

__all__ = ["ADAPTERS", "wrap"]
