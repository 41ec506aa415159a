"""How a variable's raw value from APISIX becomes the str ``request.var()`` returns."""

from __future__ import annotations

import pytest

from runner.api.http import var_text


@pytest.mark.parametrize(
    ("raw", "text"),
    [
        (None, None),
        (b"", ""),
        (b"127.0.0.1", "127.0.0.1"),
        ("J\u00fcrgen \u6f22".encode(), "J\u00fcrgen \u6f22"),
        (b"bad \xff byte", "bad \ufffd byte"),  # not UTF-8: replaced, not an error
        (b"\xe6\xbc", "\ufffd"),  # a cut-off character
        (b"\x00nul", "\x00nul"),
    ],
)
def test_var_text(raw: bytes | None, text: str | None) -> None:
    assert var_text(raw) == text
