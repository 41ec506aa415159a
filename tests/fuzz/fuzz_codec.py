#!/usr/bin/env python3
"""Coverage-guided fuzz target (atheris / libFuzzer) for the sans-IO codec.

    .venv/bin/python tests/fuzz/fuzz_codec.py -max_total_time=60
    .venv/bin/python tests/fuzz/fuzz_codec.py -runs=2000          # a quick check
    .venv/bin/python tests/fuzz/fuzz_codec.py corpus/ -max_total_time=600

Each input picks one of three shapes: a byte stream cut into reads for
``FrameDecoder`` (every frame it yields is then decoded as its type), a raw
payload for one message view, or a valid message built with the flatc
reference code (``runner.testing``) and then mutated by the input. The only
exception the codec may raise is ``runner.proto.DecodeError``; anything else,
or a frame that differs from what a reference splitter finds, is a crash that
libFuzzer reports with the input that caused it. Only ``runner.proto`` is
instrumented (the reference code is not what is under test).
"""

from __future__ import annotations

import struct
import sys
from typing import Any

import atheris

with atheris.instrument_imports(include=["runner.proto"]):
    from runner.proto import (
        DecodeError,
        ExtraInfoResp,
        FrameDecoder,
        PrepareConfReq,
        ReqCallView,
        RespCallView,
    )

from runner.testing import frames as testing  # not instrumented: the reference, not the subject

PREPARE, REQ, EXTRA, RESP = 1, 2, 3, 4

SEEDS: list[tuple[int, bytes]] = [
    (
        PREPARE,
        testing.build_prepare_conf(
            [("stop", '{"body": "ok"}'), ("rewrite", "{}"), ("x", "")], "route#1#pre-req#1"
        ),
    ),
    (PREPARE, testing.build_prepare_conf(None, "")),
    (
        REQ,
        testing.build_req_call(
            7,
            testing.HTTPRequest(
                method="POST",
                path="/a/b",
                args=[("a", "1"), ("flag", None), ("a", "2")],
                headers=[("host", "example.com"), ("x-a", "é")],
                src_ip="::1",
                id=99,
            ),
        ),
    ),
    (REQ, testing.build_req_call(0, testing.HTTPRequest())),
    (RESP, testing.build_resp_call(7, 3, 200, [("Content-Type", "text/plain"), ("X", "y")])),
    (EXTRA, testing.build_extra_info_resp(b"body\x00\xff")),
    (EXTRA, testing.build_extra_info_resp(None)),
]


def decode_all(rpc: int, payload: bytes | memoryview) -> Any:
    view = memoryview(payload)
    try:
        if rpc == PREPARE:
            conf_req = PrepareConfReq(view)
            return conf_req.key, conf_req.conf
        if rpc == REQ:
            req = ReqCallView(view)
            return (req.id, req.conf_token, req.src_ip, req.method, req.path, req.args, req.headers)
        if rpc == RESP:
            resp = RespCallView(view)
            return resp.id, resp.conf_token, resp.status, resp.headers
        return ExtraInfoResp(view).result
    except DecodeError:
        return None


def reference_split(stream: bytes) -> list[tuple[int, bytes]]:
    frames, pos = [], 0
    while len(stream) - pos >= 4:
        length = int.from_bytes(stream[pos + 1 : pos + 4], "big")
        if len(stream) - pos - 4 < length:
            break
        frames.append((stream[pos], stream[pos + 4 : pos + 4 + length]))
        pos += 4 + length
    return frames


def fuzz_stream(fdp: atheris.FuzzedDataProvider) -> None:
    chunk = fdp.PickValueInList([8, 16, 64, 4096])
    cuts = sorted(fdp.ConsumeIntInRange(0, 4096) for _ in range(fdp.ConsumeIntInRange(0, 6)))
    stream = fdp.ConsumeBytes(fdp.remaining_bytes())
    decoder = FrameDecoder(chunk=chunk)
    got: list[tuple[int, bytes]] = []
    pos = 0
    for end in [*(c for c in cuts if c < len(stream)), len(stream)]:
        while pos < end:
            buf = decoder.get_buffer()
            n = min(len(buf), end - pos)
            if n <= 0:
                raise AssertionError("the decoder offered an empty buffer")
            buf[:n] = stream[pos : pos + n]
            decoder.advance(n)
            pos += n
            while (frame := decoder.next_frame()) is not None:
                rpc, view = frame
                got.append((rpc, bytes(view)))
                decode_all(rpc, view)
    if got != reference_split(stream):
        raise AssertionError("the decoder's frames differ from the reference split")


def fuzz_view(fdp: atheris.FuzzedDataProvider) -> None:
    rpc = fdp.ConsumeIntInRange(1, 4)
    decode_all(rpc, fdp.ConsumeBytes(fdp.remaining_bytes()))


def fuzz_mutation(fdp: atheris.FuzzedDataProvider) -> None:
    rpc, seed = SEEDS[fdp.ConsumeIntInRange(0, len(SEEDS) - 1)]
    raw = bytearray(seed)
    for _ in range(fdp.ConsumeIntInRange(1, 6)):
        if not raw:
            break
        op = fdp.ConsumeIntInRange(0, 4)
        pos = fdp.ConsumeIntInRange(0, len(raw) - 1)
        if op == 0:
            raw[pos] = fdp.ConsumeIntInRange(0, 255)
        elif op == 1 and pos + 2 <= len(raw):
            struct.pack_into("<H", raw, pos, fdp.ConsumeIntInRange(0, 0xFFFF))
        elif op == 2 and pos + 4 <= len(raw):
            struct.pack_into("<I", raw, pos, fdp.ConsumeIntInRange(0, 0xFFFFFFFF))
        elif op == 3:
            del raw[pos:]
        else:
            raw[pos:pos] = fdp.ConsumeBytes(fdp.ConsumeIntInRange(1, 16))
    # As its own type and as every other one.
    decode_all(rpc, bytes(raw))
    decode_all(fdp.ConsumeIntInRange(1, 4), bytes(raw))


def TestOneInput(data: bytes) -> None:  # the name atheris expects
    fdp = atheris.FuzzedDataProvider(data)
    shape = fdp.ConsumeIntInRange(0, 2)
    if shape == 0:
        fuzz_stream(fdp)
    elif shape == 1:
        fuzz_view(fdp)
    else:
        fuzz_mutation(fdp)


def main() -> None:
    atheris.Setup(sys.argv, TestOneInput)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
