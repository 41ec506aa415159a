"""``from apisix.plugin.runner import Plugin, PluginRunner``, and the guide's
command line: ``python -m apisix.plugin.runner start [--workers N]
[--config FILE] [--debug]`` runs apisix-runner (``python -m runner start``).

At the bottom of a plugin file, as the guide writes it::

    if __name__ == "__main__":
        runner = PluginRunner()
        runner.register(MyPlugin())
        runner.run()

``python my_plugin.py [start] [--workers N] [--config FILE] [--debug]`` then
serves the registered plugins (they replace bundled plugins of the same name)
besides those of the config, on the socket from APISIX_LISTEN_ADDRESS.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from runner import cli
from runner.api.plugin import Plugin as NativePlugin
from runner.compat.guide import GuidePlugin, Plugin, wrap

__all__ = ["Plugin", "PluginRunner", "main"]


class PluginRunner:
    def __init__(self) -> None:
        self._plugins: list[type[GuidePlugin]] = []

    def register(self, plugin: Plugin | type[Plugin]) -> None:
        """Serve this plugin (an instance, as the guide writes it, or its class).
        Each route still gets its own instance; this one only gives the name."""
        cls = plugin if isinstance(plugin, type) else type(plugin)
        if not issubclass(cls, Plugin):
            raise TypeError(f"{cls.__qualname__} is not an apisix.plugin.runner.Plugin")
        name = plugin.name if isinstance(plugin, Plugin) and plugin.name else None
        self._plugins.append(wrap(cls, name))

    def run(self, argv: Sequence[str] | None = None) -> None:
        raise SystemExit(main(sys.argv[1:] if argv is None else argv, self._plugins))


def main(argv: Sequence[str], extra: Sequence[type[NativePlugin]] = ()) -> int:
    args = list(argv)
    if not args or args[0].startswith("-"):
        args.insert(0, "start")  # `python my_plugin.py --workers 2`
    return cli.main(args, extra)


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
