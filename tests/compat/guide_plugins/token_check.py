# The guide's async auth: an aiohttp session made in __init__, a POST of
# {"token": ...} to the configured auth_url in filter_async.
import json

import aiohttp

from apisix.plugin.request import Request
from apisix.plugin.response import Response
from apisix.plugin.runner import Plugin


class TokenCheckPlugin(Plugin):
    def __init__(self):
        self.name = "guide-async-auth"
        self.config = {}
        self.session = aiohttp.ClientSession()

    def set_config(self, conf: str):
        self.config = json.loads(conf)

    async def check_token(self, token: str) -> bool:
        try:
            async with self.session.post(
                self.config["auth_url"], json={"token": token}, timeout=3.0
            ) as resp:
                return resp.status == 200
        except Exception:
            return False

    async def filter_async(self, request: Request, response: Response):
        token = request.headers.get("Authorization")
        if not token:
            response.status_code = 401
            response.body = "Missing token"
            return False
        if not await self.check_token(token):
            response.status_code = 403
            response.body = "Invalid token"
            return False
        return True
