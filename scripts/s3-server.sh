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
    if [ -f "$dir/moto.pid" ]; then
        kill "$(cat "$dir/moto.pid")" 2>/dev/null || true
        rm -f "$dir/moto.pid"
    fi
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

ENDPOINT=$endpoint DIR=$dir AWS_CLI=$venv/bin/aws "$venv/bin/python" - <<'PY'
import json, os, sys, urllib.request
import boto3

endpoint, bucket = os.environ["ENDPOINT"], "coffer-test"
root = dict(endpoint_url=endpoint, region_name="us-east-1",
            aws_access_key_id="bootstrap", aws_secret_access_key="bootstrap")
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
# From now on every request is checked against the users' policies.
req = urllib.request.Request(f"{endpoint}/moto-api/reset-auth", data=b"0",
                             headers={"Content-Type": "text/plain"}, method="POST")
urllib.request.urlopen(req).read()

with open(os.path.join(os.environ["DIR"], "s3.env"), "w") as f:
    f.write(f"COFFER_TEST_S3_ENDPOINT={endpoint}\n")
    f.write(f"COFFER_TEST_S3_BUCKET={bucket}\n")
    f.write(f"COFFER_TEST_S3_ADMIN_KEY={admin[0]}\nCOFFER_TEST_S3_ADMIN_SECRET={admin[1]}\n")
    f.write(f"COFFER_TEST_S3_PUT_KEY={put[0]}\nCOFFER_TEST_S3_PUT_SECRET={put[1]}\n")
    f.write(f"COFFER_TEST_S3_LOG={os.environ['DIR']}/moto.log\n")
    f.write(f"COFFER_TEST_AWS_CLI={os.environ['AWS_CLI']}\n")
    f.write(f"COFFER_TEST_PYTHON={sys.executable}\n")
PY
echo "s3-server: moto on $endpoint, settings in $dir/s3.env" >&2
