"""Plugin.parse_conf: a plain ``msgspec.Struct`` Config rejects keys it has no
field for (a misspelled key would otherwise get a token, and every request
then fails), unless the plugin sets ``allow_unknown_fields``."""

from __future__ import annotations

from typing import Any, ClassVar

import msgspec
import pytest

from runner import Plugin, Request, Response
from runner.api import plugin as plugin_module
from runner.api.chain import build_chain
from runner.api.plugin import ConfError


class Limits(msgspec.Struct):
    rate: int = 1


class RouteA(msgspec.Struct, tag="a"):
    a: int = 0


class RouteB(msgspec.Struct, tag="b"):
    b: int = 0


class KeyAuthConfig(msgspec.Struct):  # what the README shows: no forbid_unknown_fields
    keys: list[str] = []
    header: str = "X-Api-Key"
    limits: Limits | None = None
    per_key: dict[str, Limits] = {}
    routes: list[RouteA | RouteB] = []
    renamed: int = msgspec.field(default=0, name="re-named")


class KeyAuth(Plugin):
    name = "key-auth"
    Config: ClassVar[Any] = KeyAuthConfig

    def filter(self, conf: Any, request: Request, response: Response) -> None:
        pass


class LooseKeyAuth(KeyAuth):
    name = "loose-key-auth"
    allow_unknown_fields = True


class ClosedConfig(msgspec.Struct, forbid_unknown_fields=True):
    keys: list[str] = []


class Closed(KeyAuth):
    name = "closed"
    Config = ClosedConfig


class Counts(KeyAuth):
    name = "counts"
    Config = dict[str, int]


def rejected(plugin: Plugin, raw: str) -> str:
    with pytest.raises(ConfError) as err:
        plugin.parse_conf(raw)
    return str(err.value)


def test_a_misspelled_key_is_rejected_naming_key_and_plugin() -> None:
    message = rejected(KeyAuth(), '{"kes": ["k1"]}')
    assert "'key-auth'" in message and "`kes`" in message, message
    assert "did you mean `keys`?" in message, message


def test_every_unknown_key_is_named_nested_ones_with_their_path() -> None:
    message = rejected(KeyAuth(), '{"kes": [], "limits": {"rtae": 2}, "extra": 1}')
    assert "`kes` at `$`" in message and "`extra` at `$`" in message, message
    assert "`rtae` at `$.limits`" in message, message
    # Keys of a dict stay out of the message, as in msgspec's paths.
    assert "`r` at `$.per_key[...]`" in rejected(KeyAuth(), '{"per_key": {"k": {"r": 1}}}')
    assert "`$.routes[1]`" in rejected(
        KeyAuth(), '{"routes": [{"type": "a", "a": 1}, {"type": "b", "a": 1}]}'
    )


def test_known_keys_decode_as_before() -> None:
    conf = KeyAuth().parse_conf(
        '{"keys": ["k1"], "limits": {"rate": 5}, "per_key": {"k1": {"rate": 2}}, '
        '"routes": [{"type": "b", "b": 3}], "re-named": 4}'
    )
    assert conf == KeyAuthConfig(
        ["k1"], limits=Limits(5), per_key={"k1": Limits(2)}, routes=[RouteB(3)], renamed=4
    )
    assert type(conf) is KeyAuthConfig  # the user's class, not a stand-in
    assert KeyAuth().parse_conf("") == KeyAuthConfig()
    # The field's Python name is not a key: its encode name is.
    assert "`renamed`" in rejected(KeyAuth(), '{"renamed": 4}')


def test_other_errors_keep_msgspecs_messages() -> None:
    assert "Expected `array`, got `int` - at `$.keys`" in rejected(KeyAuth(), '{"keys": 5}')
    assert "malformed" in rejected(KeyAuth(), "{not json")


def test_allow_unknown_fields_opts_out() -> None:
    assert LooseKeyAuth().parse_conf('{"keys": ["k"], "kes": 1}') == KeyAuthConfig(["k"])


def test_configs_without_open_structs_are_decoded_once() -> None:
    assert not plugin_module._has_open_structs(ClosedConfig)
    assert not plugin_module._has_open_structs(dict[str, int])
    assert plugin_module._has_open_structs(KeyAuthConfig)
    assert "unknown field `kes`" in rejected(Closed(), '{"kes": 1}')  # msgspec's own check
    assert Counts().parse_conf('{"anything": 1}') == {"anything": 1}


def test_prepare_conf_error_names_the_route_position_and_plugin() -> None:
    with pytest.raises(ConfError) as err:
        build_chain({"key-auth": KeyAuth()}, "route#1", [("key-auth", '{"kes": ["k"]}')])
    assert str(err.value).startswith("conf[0] plugin 'key-auth': "), err.value
    assert "`kes`" in str(err.value)
