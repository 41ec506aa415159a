"""flatc-generated reference code for the ext-plugin schema (see tools/gen_a6.sh).

Used by the APISIX-like test client and the benchmark baselines, never by the
runner's hot path: an implementation independent of runner.proto, so that a
bug in our codec cannot hide behind the same bug in the client.
"""
