#!/usr/bin/env bash
# The test command: installs what the tests need, starts the test servers on 127.0.0.1
# (S3: moto, scripts/s3-server.sh, and ministack, scripts/ministack-server.sh, a second
# S3 implemented independently of moto; Azure: Azurite, scripts/azure-server.sh; GCS:
# fake-gcs-server, scripts/gcs-server.sh), runs the whole suite, and stops them.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
s3dir=$(mktemp -d -t coffer-s3-XXXXXX)
azdir=$(mktemp -d -t coffer-azure-XXXXXX)
gcsdir=$(mktemp -d -t coffer-gcs-XXXXXX)
msdir=$(mktemp -d -t coffer-ministack-XXXXXX)
trap 'scripts/s3-server.sh stop "$s3dir"; scripts/azure-server.sh stop "$azdir";
      scripts/gcs-server.sh stop "$gcsdir"; scripts/ministack-server.sh stop "$msdir";
      rm -rf "$s3dir" "$azdir" "$gcsdir" "$msdir"' EXIT
scripts/s3-server.sh start "$s3dir"
scripts/ministack-server.sh start "$msdir"
scripts/azure-server.sh start "$azdir"
scripts/gcs-server.sh start "$gcsdir"
export COFFER_TEST_S3_ENV="$s3dir/s3.env"
export COFFER_TEST_MINISTACK_ENV="$msdir/s3.env"
export COFFER_TEST_AZURE_ENV="$azdir/azure.env"
export COFFER_TEST_GCS_ENV="$gcsdir/gcs.env"
log="$s3dir/cargo-test.log"
set -o pipefail
cargo test -j2 --all-targets "$@" 2>&1 | tee "$log"
# The library's examples (doctests), which --all-targets leaves out; only for the whole suite.
if [ $# -eq 0 ]; then cargo test -j2 --doc 2>&1 | tee -a "$log"; fi
# One closing line for the whole suite (the last lines above are criterion's smoke runs).
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } }
     END { printf "%d passed, %d failed\n", p, f }' "$log"
