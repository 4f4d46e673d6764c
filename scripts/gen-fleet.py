#!/usr/bin/env python3
"""A folder target as a fleet leaves it after a year, to measure what checking and
cleaning it costs (issue 16: 1,000 hosts x 365 daily runs):

    scripts/gen-fleet.py TEMPLATE_TARGET OUT HOSTS RUNS [PACKS]
    /usr/bin/time -f "%e s %M KB" coffer status --target file://OUT --json
    /usr/bin/time -f "%e s %M KB" coffer gc --target file://OUT --dry-run --json

TEMPLATE_TARGET holds one real run (any small backup: `coffer backup` of a few files).
Its object list and metafile are copied as every run of every host and source
`src`, one run a day back from now, each dated (file times) at its run's time; so every
run checks out as far as its size, format and timing go, and the keyless checks read
every object list as they would on a real fleet (they find each copy naming another run,
and say so: that costs the same reads). PACKS empty placeholders (default none) go under
data/, 30 days old, so gc has a bucket's worth of keys to list; the template's own packs
are copied too, so every run's references exist.

OUT may be `s3://BUCKET/PREFIX` (needs boto3; the endpoint and keys come from
AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY): the same objects are
put there, 16 at a time. S3 dates an object when it is stored, so there every run is
stored now while its id claims its day: the checks find it back-dated and say so (the
same reads as a genuine run).

Deterministic: the same arguments make the same tree.
"""
import hashlib
import os
import shutil
import sys
import time


class Bucket:
    """Puts to s3://BUCKET/PREFIX, many at a time."""

    def __init__(self, url):
        import boto3
        from concurrent.futures import ThreadPoolExecutor

        bucket, _, prefix = url[len("s3://"):].partition("/")
        self.bucket, self.prefix = bucket, prefix.strip("/")
        self.s3 = boto3.client("s3", endpoint_url=os.environ.get("AWS_ENDPOINT_URL"),
                               region_name=os.environ.get("AWS_REGION", "us-east-1"))
        self.pool = ThreadPoolExecutor(16)
        self.pending = []

    def put(self, key, data):
        full = f"{self.prefix}/{key}" if self.prefix else key
        self.pending.append(self.pool.submit(
            self.s3.put_object, Bucket=self.bucket, Key=full, Body=data))
        if len(self.pending) >= 256:
            self.wait()

    def wait(self):
        for f in self.pending:
            f.result()
        self.pending = []


def s3_fleet(template, url, hosts, runs, packs, meta_bytes, refs_bytes):
    b = Bucket(url)
    for d in ("data", "markers"):
        for dirpath, _, files in os.walk(os.path.join(template, d)):
            for f in files:
                path = os.path.join(dirpath, f)
                b.put(os.path.relpath(path, template), open(path, "rb").read())
    now = int(time.time()) - 86400
    for h in range(hosts):
        for r in range(runs):
            t = now - r * 86400 - h
            stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(t))
            rid = f"{stamp}-{(h * 1000003 + r) & 0xFFFFFFFF:08x}"
            for ext, data in ((".refs", refs_bytes), (".meta", meta_bytes)):
                b.put(f"runs/host{h:04d}/src/{rid}{ext}", data)
    for i in range(packs):
        k = hashlib.blake2s(i.to_bytes(8, "little"), digest_size=32).hexdigest()
        b.put(f"data/{k[:2]}/{k}", b"")
    b.wait()
    print(f"{hosts} hosts x {runs} runs and {packs} placeholder packs under {url}")


def main():
    template, out, hosts, runs = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    packs = int(sys.argv[5]) if len(sys.argv) > 5 else 0
    meta = refs = None
    for dirpath, _, files in os.walk(os.path.join(template, "runs")):
        for f in files:
            if f.endswith(".meta"):
                meta = os.path.join(dirpath, f)
                refs = meta[: -len(".meta")] + ".refs"
    if meta is None or not os.path.exists(refs):
        sys.exit(f"{template} holds no run (runs/HOST/SOURCE/ID.meta and .refs)")
    meta_bytes = open(meta, "rb").read()
    refs_bytes = open(refs, "rb").read()
    if out.startswith("s3://"):
        return s3_fleet(template, out, hosts, runs, packs, meta_bytes, refs_bytes)
    os.makedirs(out, exist_ok=True)
    for d in ("data", "markers"):
        src = os.path.join(template, d)
        if os.path.isdir(src):
            shutil.copytree(src, os.path.join(out, d), dirs_exist_ok=True)
    now = int(time.time()) - 86400
    for h in range(hosts):
        d = os.path.join(out, "runs", f"host{h:04d}", "src")
        os.makedirs(d, exist_ok=True)
        for r in range(runs):
            t = now - r * 86400 - h
            stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(t))
            rid = f"{stamp}-{(h * 1000003 + r) & 0xFFFFFFFF:08x}"
            for ext, data in ((".refs", refs_bytes), (".meta", meta_bytes)):
                p = os.path.join(d, rid + ext)
                with open(p, "wb") as f:
                    f.write(data)
                os.utime(p, (t + 5, t + 5))
    old = time.time() - 30 * 86400
    for i in range(packs):
        k = hashlib.blake2s(i.to_bytes(8, "little"), digest_size=32).hexdigest()
        d = os.path.join(out, "data", k[:2])
        os.makedirs(d, exist_ok=True)
        p = os.path.join(d, k)
        open(p, "wb").close()
        os.utime(p, (old, old))
    print(f"{hosts} hosts x {runs} runs and {packs} placeholder packs under {out}")


if __name__ == "__main__":
    main()
