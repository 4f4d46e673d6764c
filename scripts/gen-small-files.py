#!/usr/bin/env python3
"""Makes a tree of N small files of pseudo-random bytes, to measure how memory and time
grow with the number of files (issue 4: 1M files must not need more memory than 10k):

    scripts/gen-small-files.py /tmp/small-1m 1000000
    /usr/bin/time -f "%e s %M KB" coffer backup -c small.toml --json

File sizes are uniform in [MIN, MAX] bytes (default 64-2048), 1,000 files per directory,
mtimes in 2020 (so the digest cache trusts them on the next run). Deterministic per SEED.

usage: gen-small-files.py DIR N [MIN MAX [SEED]]
"""
import os
import random
import sys


def main():
    root, n = sys.argv[1], int(sys.argv[2])
    lo = int(sys.argv[3]) if len(sys.argv) > 3 else 64
    hi = int(sys.argv[4]) if len(sys.argv) > 4 else 2048
    rng = random.Random(int(sys.argv[5]) if len(sys.argv) > 5 else 1)
    mtime = 1577836800  # 2020-01-01
    pool = rng.randbytes(1 << 20)
    for i in range(n):
        d = os.path.join(root, f"d{i // 1000:05d}")
        if i % 1000 == 0:
            os.makedirs(d, exist_ok=True)
        size = rng.randint(lo, hi)
        start = rng.randrange(len(pool) - size)
        # A fresh prefix keeps every file distinct (no dedup between files).
        data = i.to_bytes(8, "little") + pool[start:start + size - 8]
        p = os.path.join(d, f"f{i:07d}")
        with open(p, "wb") as f:
            f.write(data)
        os.utime(p, (mtime, mtime))
    print(f"{n} files of {lo}-{hi} bytes under {root}")


if __name__ == "__main__":
    main()
