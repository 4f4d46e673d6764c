#!/usr/bin/env bash
# A real S3-compatible server for the tests: moto 5.2.5 on 127.0.0.1, with IAM enforced.
#
#   scripts/s3-server.sh start DIR   install (once) and start; writes DIR/s3.env
#   scripts/s3-server.sh stop DIR    stop it
#
# The server gets a versioned bucket `coffer-test` and two IAM users: `admin` (allowed
# everything) and `putonly` (allowed only s3:PutObject on the bucket's objects), then auth
# is switched on. DIR/s3.env holds KEY=VALUE lines the tests read (COFFER_TEST_S3_ENV
# names the file): the endpoint, the bucket, both users' keys (moto makes new ones at
# every start), the request log and the AWS CLI used as an independent client.
set -euo pipefail
cmd=${1:?usage: s3-server.sh start|stop DIR}
dir=$(realpath -m "${2:?usage: s3-server.sh start|stop DIR}")
venv=${COFFER_S3_VENV:-$HOME/.cache/coffer/s3-venv}

case "$cmd" in
stop)
    . "$(dirname "$(realpath "$0")")/stop-server.sh"
    stop_pidfile "$dir/moto.pid"
    exit 0
    ;;
start) ;;
*) echo "usage: s3-server.sh start|stop DIR" >&2; exit 2 ;;
esac

mkdir -p "$dir"
# prometheus-client: the tests parse `coffer status --prometheus` with its parser.
if ! "$venv/bin/python" -c 'import moto, flask_cors, prometheus_client' 2>/dev/null || [ ! -x "$venv/bin/aws" ]; then
    echo "s3-server: installing moto, awscli and prometheus-client into $venv" >&2
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q 'moto[s3,iam]==5.2.5' flask flask-cors awscli 'prometheus-client==0.21.1'
fi
port=$("$venv/bin/python" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
"$venv/bin/moto_server" -H 127.0.0.1 -p "$port" >"$dir/moto.log" 2>&1 &
echo $! >"$dir/moto.pid"
endpoint="http://127.0.0.1:$port"
"$venv/bin/python" - "$endpoint" <<'PY'
import sys, time, urllib.request
for _ in range(300):
    try:
        urllib.request.urlopen(sys.argv[1] + "/moto-api/", timeout=1).read()
        break
    except Exception:
        time.sleep(0.1)
else:
    sys.exit("s3-server: moto did not start; see moto.log")
PY

# From now on (RESET_AUTH) every request is checked against the users' policies.
ENDPOINT=$endpoint DIR=$dir ROOT_KEY=bootstrap ROOT_SECRET=bootstrap LOG=$dir/moto.log \
    AWS_CLI=$venv/bin/aws RESET_AUTH=$endpoint/moto-api/reset-auth \
    "$venv/bin/python" "$(dirname "$0")/s3_test_users.py"
echo "s3-server: moto on $endpoint, settings in $dir/s3.env" >&2
