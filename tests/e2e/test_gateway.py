"""What an APISIX-like gateway does with the runner's replies (docs/protocol.md §5-§7),
seen from the client and from the echo upstream."""

from __future__ import annotations

import json
from collections import Counter

from bench.gateway import rig

from .conftest import request


def test_plain_proxy_reaches_the_echo_upstream(gateway: rig.Rig) -> None:
    reply = request(gateway, "/proxy?x=1&y&z=", headers={"X-Req": "a"})
    echo = reply.echo()
    assert echo["path"] == "/proxy"
    assert echo["args"] == [("x", "1"), ("y", None), ("z", "")]
    assert echo["header_map"]["x-req"] == ["a"]


def test_unknown_route_is_404(gateway: rig.Rig) -> None:
    assert request(gateway, "/nowhere").status == 404


def test_stop(gateway: rig.Rig) -> None:
    reply = request(gateway, "/stop")
    assert reply.status == 403
    assert reply.body == b"no"
    assert reply.header("X-Reason") == "blocked"


def test_stop_without_status_or_body_is_an_empty_200(gateway: rig.Rig) -> None:
    reply = request(gateway, "/stop-default")
    assert (reply.status, reply.body) == (200, b"")


def test_multi_valued_stop_and_resp_headers(gateway: rig.Rig) -> None:
    """http-req-call.t TESTs 25-26: the first entry sets, later ones add."""
    stopped = request(gateway, "/multi-stop")
    assert (stopped.status, stopped.body) == (200, b"stopped")
    assert stopped.header_all("X-Same") == ["one", "two"]
    proxied = request(gateway, "/multi")
    assert proxied.echo()["path"] == "/multi"
    assert proxied.header_all("X-Same") == ["one", "two"]


def test_what_the_runner_is_sent(gateway: rig.Rig) -> None:
    """docs/protocol.md §5.1: lower-case header names, one entry per value, host = upstream host,
    args without a value, the client address and method."""
    reply = request(
        gateway,
        "/seen?xx=y&xx=z&&y=&&z",
        method="PUT",
        headers=[("X-Req", "1"), ("X-Req", "2"), ("Host", "client.test:8080")],
        body=b"",
    )
    seen = json.loads(reply.body)
    assert seen["method"] == "PUT"
    assert seen["path"] == "/seen"
    assert seen["src_ip"] == "127.0.0.1"
    assert Counter(map(tuple, seen["args"])) == Counter(
        [("xx", "y"), ("xx", "z"), ("y", ""), ("z", None)]
    )
    headers = [tuple(h) for h in seen["headers"]]
    assert ("host", "client.test:8080") in headers
    assert [v for n, v in headers if n == "x-req"] == ["1", "2"]
    assert all(n == n.lower() for n, _ in headers)


def test_rewrite_path_headers_args_as_the_upstream_sees_them(gateway: rig.Rig) -> None:
    reply = request(
        gateway,
        "/rewrite?debug=1&keep=2",
        headers={"X-Drop": "bye", "X-Keep": "k", "X-A": "old"},
    )
    echo = reply.echo()
    # docs/protocol.md §5.4: the path is escaped like ngx_escape_uri type 0, the query is kept
    assert echo["path"] == "/v2/a%20b/%C3%A9%23%25"
    assert Counter(echo["args"]) == Counter([("keep", "2"), ("lang", "en")])
    h = echo["header_map"]
    assert h["x-a"] == ["1"]
    assert "x-drop" not in h
    assert h["x-keep"] == ["k"]
    # a Host rewrite changes the upstream host
    assert h["host"] == ["example.test"]
    # resp_headers reach the client, except the excluded ones
    assert reply.header("X-Served-By") == "py"
    assert reply.header("Content-Type") == "application/json"


def test_rewrite_headers_only_keeps_path_and_query(gateway: rig.Rig) -> None:
    echo = request(gateway, "/rewrite-headers?c=foo&d=bar").echo()
    assert echo["uri"] == "/rewrite-headers?c=foo&d=bar"
    assert echo["header_map"]["x-a"] == ["1"]


def test_args_merge_first_replaces_later_append_none_deletes(gateway: rig.Rig) -> None:
    """http-req-call.t TEST 7: a=foo,bar; c replaced; d deleted; e kept."""
    echo = request(gateway, "/args?a=old&c=1&c=2&d=1&e=keep").echo()
    assert Counter(echo["args"]) == Counter([("a", "foo"), ("a", "bar"), ("c", "x"), ("e", "keep")])


def test_request_body_rewrite(gateway: rig.Rig) -> None:
    echo = request(gateway, "/body", method="POST", body=b"original").echo()
    assert echo["body"] == "abc\n"
    assert echo["header_map"]["content-length"] == ["4"]


def test_request_body_set_on_a_get(gateway: rig.Rig) -> None:
    assert request(gateway, "/body").echo()["body"] == "abc\n"


def test_extra_info_vars_and_body(gateway: rig.Rig) -> None:
    reply = request(gateway, "/extra?x=42", method="POST", body=b"123")
    assert reply.status == 200
    got = json.loads(reply.body)
    assert got["vars"] == {
        "remote_addr": "127.0.0.1",
        "route_id": "extra-route",
        "arg_x": "42",
        "request_method": "POST",
        "no_such_var": None,
    }
    assert got["body"] == "123"


def test_extra_info_body_of_a_get_is_empty(gateway: rig.Rig) -> None:
    got = json.loads(request(gateway, "/extra").body)
    assert got["body"] == ""
    assert got["vars"]["arg_x"] is None


def test_extra_info_large_body(gateway: rig.Rig) -> None:
    body = bytes(range(256)) * 8192  # 2 MiB: spills to a temp file in nginx
    got = json.loads(request(gateway, "/extra", method="POST", body=body).body)
    assert got["body"].encode("latin-1") == body


def test_post_req_sees_the_pre_req_rewrite(gateway: rig.Rig) -> None:
    """http-req-call.t TESTs 10-13: post-req gets upstream_uri's path and args."""
    seen = json.loads(request(gateway, "/two-phases?q=0").body)
    assert seen["path"] == "/rewritten"
    assert Counter(map(tuple, seen["args"])) == Counter([("q", "0"), ("p", "1")])


def test_plugin_chain_runs_in_order(gateway: rig.Rig) -> None:
    reply = request(gateway, "/chain")
    echo = reply.echo()
    assert echo["header_map"]["x-first"] == ["1"]
    assert reply.header("X-Python-Plugin") == "hello-world"


def test_prefix_route(gateway: rig.Rig) -> None:
    echo = request(gateway, "/prefix/a/b").echo()
    assert echo["path"] == "/prefix/a/b"
    assert echo["header_map"]["x-p"] == ["1"]


def _upstream_headers(*pairs: tuple[str, str]) -> list[tuple[str, str]]:
    return [("X-Echo-Header", f"{n}: {v}") for n, v in pairs]


def test_post_resp_status_headers_body(gateway: rig.Rig) -> None:
    reply = request(
        gateway,
        "/resp",
        headers=_upstream_headers(("X-Up-Keep", "1"), ("X-Up-Drop", "1")),
    )
    assert reply.status == 201
    assert reply.body == b"replaced"
    assert reply.header("X-Cache") == "miss"
    assert reply.header("X-Up-Keep") == "1"  # the upstream's other headers are kept
    assert reply.header("X-Up-Drop") is None


def test_post_resp_header_change_keeps_upstream_body_status_and_headers(
    gateway: rig.Rig,
) -> None:
    reply = request(
        gateway,
        "/resp-headers",
        headers=[
            *_upstream_headers(("X-Multi", "a"), ("X-Multi", "b"), ("X-Cache", "upstream")),
            ("X-Echo-Status", "202"),
        ],
    )
    assert reply.status == 202
    assert reply.header("X-Cache") == "hit"
    assert reply.header_all("X-Multi") == ["a", "b"]
    assert reply.header("Content-Type") == "application/json"
    assert reply.echo()["path"] == "/resp-headers"


def test_post_resp_status_only_streams_the_upstream_body(gateway: rig.Rig) -> None:
    reply = request(gateway, "/resp-status", headers={"X-Echo-Body": "upstream body"})
    assert reply.status == 418
    assert reply.body == b"upstream body"


def test_post_resp_no_change_copies_upstream_headers_minus_excluded(gateway: rig.Rig) -> None:
    """docs/protocol.md §7.3: zero headers from the runner: APISIX copies the upstream's headers
    except the excluded ones (Location is one of them)."""
    reply = request(
        gateway,
        "/resp-none",
        headers=_upstream_headers(("X-Up", "u"), ("Location", "/elsewhere")),
    )
    assert reply.status == 200
    assert reply.header("X-Up") == "u"
    assert reply.echo()["path"] == "/resp-none"


def test_post_resp_body_through_extra_info(gateway: rig.Rig) -> None:
    reply = request(
        gateway,
        "/resp-body",
        headers=[("X-Echo-Body", "hello world"), ("X-Echo-Status", "203")],
    )
    assert reply.status == 203
    assert reply.body == b"HELLO WORLD"
    assert reply.header("X-Upstream-Status") == "203"
    assert reply.header("X-Body-Len") == "11"


def test_post_resp_body_of_a_chunked_upstream(gateway: rig.Rig) -> None:
    reply = request(
        gateway,
        "/resp-body",
        headers=[("X-Echo-Body", "chunked body"), ("X-Echo-Chunked", "1")],
    )
    assert reply.body == b"CHUNKED BODY"


def test_runner_error_is_503_unless_degradation_allowed(gateway: rig.Rig) -> None:
    """An unknown plugin fails PrepareConf (BAD_REQUEST): 503, no retry."""
    assert request(gateway, "/bad-plugin").status == 503
    assert request(gateway, "/bad-plugin-degraded").echo()["path"] == "/bad-plugin-degraded"
    assert "Plugin Runner is wrong, allow degradation" in gateway.error_log_text()


def test_many_requests_over_pooled_connections(gateway: rig.Rig) -> None:
    for i in range(50):
        assert request(gateway, "/stop").status == 403, i
    errors = [
        line
        for line in gateway.error_log_text().splitlines()
        if "[error]" in line and "/bad-plugin" not in line
    ]
    assert errors == []
