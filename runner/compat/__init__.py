"""Other plugin APIs, each an adapter onto :mod:`runner.api`: plugins written
for them load unchanged. ``legacy``: the old official Python runner's
``PluginBase`` (0.2); ``base01``: its first release's ``Base``; ``guide``: the
``apisix.plugin.*`` API of the Chinese APISIX Python plugin guide. ``shims``
makes the old import paths importable, ``adapter`` holds what they share. May
import ``runner.api`` and below, never ``runner.server``.
"""

from __future__ import annotations

from runner.api.discovery import Adapter
from runner.compat import base01, guide, legacy
from runner.compat.legacy import wrap

#: Every adapter, in the order discovery asks them; the server and the test kit
#: pass this to ``load_plugins``.
ADAPTERS: tuple[Adapter, ...] = (legacy, base01, guide)

__all__ = ["ADAPTERS", "wrap"]
