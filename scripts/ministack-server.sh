#!/usr/bin/env bash
# A second S3 server for the tests, implemented independently of moto: ministack 1.5.33
# (PyPI; its own S3 and IAM, MIT-licensed, no moto inside) on 127.0.0.1, IAM enforced
# and SigV4 checked for IAM users. The S3 scenarios run against it too, so that S3
# compatibility is not one emulator's opinion.
#
#   scripts/ministack-server.sh start DIR   install (once) and start; writes DIR/s3.env
#   scripts/ministack-server.sh stop DIR    stop it
#
# As scripts/s3-server.sh: a versioned bucket `coffer-test`, IAM users `admin` (allowed
# everything) and `putonly` (only s3:PutObject on the bucket's objects), and DIR/s3.env
# with the same KEY=VALUE lines (COFFER_TEST_MINISTACK_ENV names the file). Its root
# key is not signature-checked, so the tests use the IAM users' keys only.
set -euo pipefail
cmd=${1:?usage: ministack-server.sh start|stop DIR}
dir=$(realpath -m "${2:?usage: ministack-server.sh start|stop DIR}")
venv=${COFFER_MINISTACK_VENV:-$HOME/.cache/coffer/ministack-venv}

case "$cmd" in
stop)
    . "$(dirname "$(realpath "$0")")/stop-server.sh"
    stop_pidfile "$dir/ministack.pid"
    exit 0
    ;;
start) ;;
*) echo "usage: ministack-server.sh start|stop DIR" >&2; exit 2 ;;
esac

mkdir -p "$dir"
if ! "$venv/bin/python" -c 'import ministack, boto3, prometheus_client' 2>/dev/null || [ ! -x "$venv/bin/aws" ]; then
    echo "ministack-server: installing ministack, boto3, awscli and prometheus-client into $venv" >&2
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q 'ministack==1.5.33' boto3 awscli 'prometheus-client==0.21.1'
fi
port=$("$venv/bin/python" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
root_key=root$RANDOM$RANDOM
AUTH=true GATEWAY_PORT=$port BIND_HOST=127.0.0.1 \
    AWS_ACCESS_KEY_ID=$root_key AWS_SECRET_ACCESS_KEY=unused \
    "$venv/bin/ministack" >"$dir/ministack.log" 2>&1 &
echo $! >"$dir/ministack.pid"
endpoint="http://127.0.0.1:$port"
"$venv/bin/python" - "$endpoint" <<'PY'
import sys, time, urllib.request
for _ in range(300):
    try:
        urllib.request.urlopen(sys.argv[1] + "/_ministack/health", timeout=1).read()
        break
    except Exception:
        time.sleep(0.1)
else:
    sys.exit("ministack-server: ministack did not start; see ministack.log")
PY

ENDPOINT=$endpoint DIR=$dir ROOT_KEY=$root_key ROOT_SECRET=unused LOG=$dir/ministack.log \
    AWS_CLI=$venv/bin/aws "$venv/bin/python" "$(dirname "$0")/s3_test_users.py"
echo "ministack-server: ministack on $endpoint, settings in $dir/s3.env" >&2
