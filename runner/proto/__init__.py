"""Sans-IO codec of the APISIX ext-plugin protocol (frames and messages).

Nothing here does I/O or imports asyncio, socket or uvloop (a test enforces it).
"""

from .fb import DecodeError
from .frame import HEADER_SIZE, MAX_PAYLOAD, FrameDecoder, FrameTooLarge, RpcType, encode_frame
from .messages import (
    METHODS,
    ErrCode,
    ExtraInfoResp,
    InfoType,
    PrepareConfReq,
    ReqCallView,
    RespCallView,
    build_err,
    build_extra_info,
    build_prepare_conf_resp,
    build_req_call_none,
    build_req_call_rewrite,
    build_req_call_stop,
    build_resp_call_resp,
    extra_info_result,
)

__all__ = [
    "HEADER_SIZE",
    "MAX_PAYLOAD",
    "METHODS",
    "DecodeError",
    "ErrCode",
    "ExtraInfoResp",
    "FrameDecoder",
    "FrameTooLarge",
    "InfoType",
    "PrepareConfReq",
    "ReqCallView",
    "RespCallView",
    "RpcType",
    "build_err",
    "build_extra_info",
    "build_prepare_conf_resp",
    "build_req_call_none",
    "build_req_call_rewrite",
    "build_req_call_stop",
    "build_resp_call_resp",
    "encode_frame",
    "extra_info_result",
]
