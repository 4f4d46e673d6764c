#!/usr/bin/env python3
"""Makes a folder target with N fake packs (empty files, 30 days old) and one committed run
whose object list names every other one, to measure `coffer gc` on many objects:

    scripts/gen-objects.py /tmp/gcbench 1000000
    /usr/bin/time -f "%e s %M KB" coffer gc --target file:///tmp/gcbench --dry-run

The packs are not real (gc never reads them); the run's metafile is a placeholder.
"""
import hashlib
import os
import sys
import time

root, n = sys.argv[1], int(sys.argv[2])
old = time.time() - 30 * 86400
keys = sorted(hashlib.blake2s(i.to_bytes(8, "little"), digest_size=32).hexdigest() for i in range(n))
for k in keys:
    d = os.path.join(root, "data", k[:2])
    os.makedirs(d, exist_ok=True)
    p = os.path.join(d, k)
    open(p, "wb").close()
    os.utime(p, (old, old))
run = os.path.join(root, "runs", "bench", "src")
os.makedirs(run, exist_ok=True)
rid = "20260101T000000Z-00000001"
kept = keys[::2]
with open(os.path.join(run, rid + ".refs"), "w") as f:
    f.write("coffer-refs 1\ndedup-max-age 604800\nmax-run-time 604800\n")
    f.writelines(k + "\n" for k in kept)
    f.write(f"end {len(kept)}\n")
open(os.path.join(run, rid + ".meta"), "wb").close()
print(f"{n} objects, {len(kept)} referenced, under {root}")
