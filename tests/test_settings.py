from __future__ import annotations

from pathlib import Path

import pytest

from runner.settings import SettingsError, load_settings

ENV = {"APISIX_LISTEN_ADDRESS": "unix:/run/apisix.sock"}


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return path


def test_defaults_and_environment(tmp_path: Path) -> None:
    s = load_settings(tmp_path / "missing.yaml", env=ENV)
    assert s.socket_path == "/run/apisix.sock"
    assert s.socket.mode == 0o766
    assert s.token_ttl == 7200.0  # 2 x the default 3600
    s = load_settings(tmp_path / "missing.yaml", env={**ENV, "APISIX_CONF_EXPIRE_TIME": "10"})
    assert s.token_ttl == 20.0


def test_yaml_values_and_overrides(tmp_path: Path) -> None:
    path = write(tmp_path, "socket:\n  mode: 0700\nworkers: 3\nplugin_dirs: [mine]\n")
    s = load_settings(path, env=ENV, workers=2)
    assert (s.socket.mode, s.workers) == (0o700, 2)
    assert s.plugin_paths() == [tmp_path / "mine"]
    assert load_settings(write(tmp_path, "socket: {mode: '0o750'}"), env=ENV).socket.mode == 0o750


@pytest.mark.parametrize(
    ("text", "env", "message"),
    [
        ("workers: 0\n", ENV, r"Expected `int` >= 1 - at `\$.workers`"),
        ("wokers: 2\n", ENV, r"unknown field `wokers`"),
        ("call_timeout: soon\n", ENV, r"Expected `float`, got `str` - at `\$.call_timeout`"),
        ("logging: {level: LOUD}\n", ENV, r"\$.logging.level"),
        ("- a\n", ENV, "mapping"),
        ("socket: {mode: rw}\n", ENV, "socket.mode: 'rw' is not an octal file mode"),
        ("", {"APISIX_LISTEN_ADDRESS": "tcp:1.2.3.4"}, "unix:/path/to.sock"),
        ("", {**ENV, "APISIX_CONF_EXPIRE_TIME": "1h"}, "APISIX_CONF_EXPIRE_TIME"),
    ],
)
def test_bad_values_name_the_key(
    tmp_path: Path, text: str, env: dict[str, str], message: str
) -> None:
    with pytest.raises(SettingsError, match=message):
        load_settings(write(tmp_path, text), env=env)


def test_no_socket_path_is_a_clear_error(tmp_path: Path) -> None:
    s = load_settings(write(tmp_path, ""), env={})
    with pytest.raises(SettingsError, match="APISIX_LISTEN_ADDRESS"):
        _ = s.socket_path
