#!/usr/bin/env bash
# Regenerates runner/testing/_a6 (flatc reference code) from runner/proto/ext-plugin.fbs.
# Needs Debian's flatbuffers-compiler. The output is committed, so users never run this.
set -euo pipefail
cd "$(dirname "$0")/.."
rm -rf runner/testing/_a6
mkdir -p runner/testing/_a6
flatc --python -o runner/testing/_a6 runner/proto/ext-plugin.fbs
# flatc writes absolute `from A6.X import` lines; make them package-relative.
grep -rl "from A6\." runner/testing/_a6 | xargs sed -i 's/from A6\./from runner.testing._a6.A6./'
cat > runner/testing/_a6/__init__.py <<'PY'
"""flatc-generated reference code for the ext-plugin schema (see tools/gen_a6.sh).

Used by the APISIX-like test client and the benchmark baselines, never by the
runner's hot path: an implementation independent of runner.proto, so that a
bug in our codec cannot hide behind the same bug in the client.
"""
PY
