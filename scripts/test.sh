#!/usr/bin/env bash
# The test command: installs what the tests need, starts the S3 test server (moto on
# 127.0.0.1, scripts/s3-server.sh), runs the whole suite, and stops the server.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
s3dir=$(mktemp -d -t coffer-s3-XXXXXX)
trap 'scripts/s3-server.sh stop "$s3dir"; rm -rf "$s3dir"' EXIT
scripts/s3-server.sh start "$s3dir"
export COFFER_TEST_S3_ENV="$s3dir/s3.env"
log="$s3dir/cargo-test.log"
set -o pipefail
cargo test -j2 --all-targets "$@" 2>&1 | tee "$log"
# The library's examples (doctests), which --all-targets leaves out; only for the whole suite.
if [ $# -eq 0 ]; then cargo test -j2 --doc 2>&1 | tee -a "$log"; fi
# One closing line for the whole suite (the last lines above are criterion's smoke runs).
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } }
     END { printf "%d passed, %d failed\n", p, f }' "$log"
