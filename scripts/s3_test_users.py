"""Sets up an S3 test server for the tests (scripts/s3-server.sh, scripts/ministack-server.sh).

A versioned bucket `coffer-test`, IAM users `admin` (allowed everything) and `putonly`
(only s3:PutObject on the bucket's objects), and DIR/s3.env with the KEY=VALUE lines
the tests read. Settings from the environment: ENDPOINT, DIR, ROOT_KEY and ROOT_SECRET
(the server's bootstrap credential), LOG (the server's log file), AWS_CLI, and
RESET_AUTH (a URL to POST to once the users exist: moto switches IAM checks on there).
"""
import json
import os
import sys
import urllib.request

import boto3

env = os.environ
endpoint, bucket = env["ENDPOINT"], "coffer-test"
root = dict(endpoint_url=endpoint, region_name="us-east-1",
            aws_access_key_id=env["ROOT_KEY"], aws_secret_access_key=env["ROOT_SECRET"])
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
if env.get("RESET_AUTH"):
    req = urllib.request.Request(env["RESET_AUTH"], data=b"0",
                                 headers={"Content-Type": "text/plain"}, method="POST")
    urllib.request.urlopen(req).read()

with open(os.path.join(env["DIR"], "s3.env"), "w") as f:
    f.write(f"COFFER_TEST_S3_ENDPOINT={endpoint}\n")
    f.write(f"COFFER_TEST_S3_BUCKET={bucket}\n")
    f.write(f"COFFER_TEST_S3_ADMIN_KEY={admin[0]}\nCOFFER_TEST_S3_ADMIN_SECRET={admin[1]}\n")
    f.write(f"COFFER_TEST_S3_PUT_KEY={put[0]}\nCOFFER_TEST_S3_PUT_SECRET={put[1]}\n")
    f.write(f"COFFER_TEST_S3_LOG={env['LOG']}\n")
    f.write(f"COFFER_TEST_AWS_CLI={env['AWS_CLI']}\n")
    f.write(f"COFFER_TEST_PYTHON={sys.executable}\n")
