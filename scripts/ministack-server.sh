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
    if [ -f "$dir/ministack.pid" ]; then
        kill "$(cat "$dir/ministack.pid")" 2>/dev/null || true
        rm -f "$dir/ministack.pid"
    fi
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

ENDPOINT=$endpoint DIR=$dir ROOT_KEY=$root_key AWS_CLI=$venv/bin/aws "$venv/bin/python" - <<'PY'
import json, os, sys
import boto3

endpoint, bucket = os.environ["ENDPOINT"], "coffer-test"
root = dict(endpoint_url=endpoint, region_name="us-east-1",
            aws_access_key_id=os.environ["ROOT_KEY"], aws_secret_access_key="unused")
s3 = boto3.client("s3", **root)
iam = boto3.client("iam", **root)
s3.create_bucket(Bucket=bucket)
s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})

def user(name, action, resource):
    iam.create_user(UserName=name)
    iam.put_user_policy(UserName=name, PolicyName=name, PolicyDocument=json.dumps({
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Allow", "Action": action, "Resource": resource}]}))
    k = iam.create_access_key(UserName=name)["AccessKey"]
    return k["AccessKeyId"], k["SecretAccessKey"]

admin = user("admin", "*", "*")
put = user("putonly", "s3:PutObject", f"arn:aws:s3:::{bucket}/*")

with open(os.path.join(os.environ["DIR"], "s3.env"), "w") as f:
    f.write(f"COFFER_TEST_S3_ENDPOINT={endpoint}\n")
    f.write(f"COFFER_TEST_S3_BUCKET={bucket}\n")
    f.write(f"COFFER_TEST_S3_ADMIN_KEY={admin[0]}\nCOFFER_TEST_S3_ADMIN_SECRET={admin[1]}\n")
    f.write(f"COFFER_TEST_S3_PUT_KEY={put[0]}\nCOFFER_TEST_S3_PUT_SECRET={put[1]}\n")
    f.write(f"COFFER_TEST_S3_LOG={os.environ['DIR']}/ministack.log\n")
    f.write(f"COFFER_TEST_AWS_CLI={os.environ['AWS_CLI']}\n")
    f.write(f"COFFER_TEST_PYTHON={sys.executable}\n")
PY
echo "ministack-server: ministack on $endpoint, settings in $dir/s3.env" >&2
