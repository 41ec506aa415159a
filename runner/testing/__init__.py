"""The test kit for plugin authors, standing in for APISIX.

* :class:`Client` — an APISIX-like client of a running runner's socket
  (:mod:`runner.testing.client`);
* :class:`PluginTester` — runs plugins in-process through the runner's own
  dispatcher, no socket (:mod:`runner.testing.plugintest`);
* the frames both build and read, with the flatc reference code
  (:mod:`runner.testing.frames`); the ``runner`` pytest fixture
  (:mod:`runner.testing.pytest_plugin`).

Sits on :mod:`runner.api` and :mod:`runner.conf`; nothing in the runner imports it.
"""

from runner.testing.client import Client
from runner.testing.frames import (
    MAX_PAYLOAD,
    METHODS,
    RPC_ERROR,
    RPC_EXTRA_INFO,
    RPC_HTTP_REQ_CALL,
    RPC_HTTP_RESP_CALL,
    RPC_PREPARE_CONF,
    Entries,
    HTTPRequest,
    ProtocolError,
    ReqCallResult,
    RespCallResult,
    Rewrite,
    RunnerError,
    Stop,
    apply_rewrite,
    build_extra_info_resp,
    build_prepare_conf,
    build_req_call,
    build_resp_call,
    encode_frame,
    parse_req_call_resp,
    parse_resp_call_resp,
    text_vector,
)
from runner.testing.plugintest import PluginTester

__all__ = [
    "MAX_PAYLOAD",
    "METHODS",
    "RPC_ERROR",
    "RPC_EXTRA_INFO",
    "RPC_HTTP_REQ_CALL",
    "RPC_HTTP_RESP_CALL",
    "RPC_PREPARE_CONF",
    "Client",
    "Entries",
    "HTTPRequest",
    "PluginTester",
    "ProtocolError",
    "ReqCallResult",
    "RespCallResult",
    "Rewrite",
    "RunnerError",
    "Stop",
    "apply_rewrite",
    "build_extra_info_resp",
    "build_prepare_conf",
    "build_req_call",
    "build_resp_call",
    "encode_frame",
    "parse_req_call_resp",
    "parse_resp_call_resp",
    "text_vector",
]
