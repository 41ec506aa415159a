# Per-route state on the instance: each route's set_config must stay its own.
import asyncio
import json

from apisix.plugin.runner import Plugin


class RouteTagPlugin(Plugin):
    def __init__(self):
        self.name = "guide-route-tag"
        self.config = {}

    def set_config(self, conf: str):
        self.config = json.loads(conf)
        self.tag = self.config["tag"]

    async def filter_async(self, request, response):
        await asyncio.sleep(0.001)  # interleave concurrent calls of both routes
        response.status_code = 200
        response.body = f"{self.tag}:{self.config['tag']}"
        return False
