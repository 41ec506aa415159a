"""The import paths of the Chinese APISIX Python plugin guide, served by
apisix-runner (``runner.compat.guide``): ``apisix.plugin.runner``,
``apisix.plugin.request`` and ``apisix.plugin.response``.

``apisix`` itself is a namespace package (no ``__init__``), so this never
replaces a real ``apisix`` distribution installed beside it; see
docs/migration.md.
"""
