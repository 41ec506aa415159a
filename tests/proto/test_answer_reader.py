"""The reader of ExtraInfo answers (``fb.root_bytes0``): the C one of the
compiled build (runner/proto/_cutframe.c) reads what a Table reads, and
leaves every malformed answer to the Table, which raises DecodeError."""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

import pytest

from runner.proto import fb
from runner.proto.chelpers import c_function
from runner.testing.frames import build_extra_info_resp

_C: Callable[[bytes], Any] | None = c_function("runner.proto._cutframe", "root_bytes0")


def _twin(data: bytes) -> object:
    try:
        return fb.Table.root(data).byte_vector(0)
    except fb.DecodeError:
        return fb.DecodeError


def _answers() -> list[bytes]:
    rng = random.Random(7)
    valid = [build_extra_info_resp(v) for v in (None, b"", b"1", b"10.0.0.1", bytes(range(256)))]
    cases = list(valid)
    for _ in range(3000):
        base = bytearray(rng.choice(valid))
        for _ in range(rng.randrange(1, 4)):  # flip a few bytes, or cut the buffer short
            if rng.random() < 0.2:
                del base[rng.randrange(len(base) + 1) :]
            elif base:
                base[rng.randrange(len(base))] = rng.randrange(256)
        cases.append(bytes(base))
    cases += [b"", b"\x00" * 7, b"\xff" * 8, b"\x08\x00\x00\x00" + b"\x00" * 8]
    return cases


@pytest.mark.skipif(_C is None, reason="the pure build has no C reader (the twin runs)")
def test_the_c_reader_reads_what_the_twin_reads() -> None:
    assert _C is not None
    for data in _answers():
        found = _C(data)
        expected = _twin(data)
        if found is False:
            assert expected is fb.DecodeError, data
        else:
            assert found == expected, data


def test_root_bytes0_reads_answers_and_refuses_malformed_ones() -> None:
    for value in (None, b"", b"127.0.0.1", bytes(range(256))):
        payload = build_extra_info_resp(value)
        assert fb.root_bytes0(payload) == value
        assert fb.root_bytes0(memoryview(payload)) == value
    for data in _answers():
        expected = _twin(data)
        if expected is fb.DecodeError:
            with pytest.raises(fb.DecodeError):
                fb.root_bytes0(data)
        else:
            assert fb.root_bytes0(data) == expected
