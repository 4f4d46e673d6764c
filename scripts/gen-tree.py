#!/usr/bin/env python3
"""Generates a deterministic tree of mixed files for measurements.

usage: gen-tree.py DIR TOTAL_BYTES [SEED]

About half the bytes go to a few large incompressible files (1-64 MiB), a quarter to
text-like compressible files, and a quarter to many small files (1-64 KiB) in nested
directories, roughly like a server's /srv. mtimes are set a day in the past so the digest
cache applies on the next run.
"""
import os
import random
import sys
import time


def words(rng, n):
    vocab = [b"backup", b"server", b"config", b"error", b"value", b"the", b"and",
             b"request", b"user", b"index", b"0", b"1", b"42", b"\n", b"{", b"}"]
    out = bytearray()
    while len(out) < n:
        out += rng.choice(vocab) + b" "
    return bytes(out[:n])


def main():
    root, total = sys.argv[1], int(sys.argv[2])
    rng = random.Random(int(sys.argv[3]) if len(sys.argv) > 3 else 1)
    past = time.time() - 86400
    budget = {"big": total // 2, "text": total // 4, "small": total - total // 2 - total // 4}
    n = 0

    def write(path, data):
        nonlocal n
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(data)
        os.utime(path, (past, past))
        n += 1

    left = budget["big"]
    i = 0
    while left > 0:
        size = min(left, rng.randint(1 << 20, 64 << 20))
        write(os.path.join(root, "big", f"blob{i:03}.bin"), os.urandom(size))
        left -= size
        i += 1
    left = budget["text"]
    i = 0
    while left > 0:
        size = min(left, rng.randint(64 << 10, 4 << 20))
        write(os.path.join(root, "logs", f"app{i:03}.log"), words(rng, size))
        left -= size
        i += 1
    left = budget["small"]
    i = 0
    while left > 0:
        size = min(left, rng.randint(1 << 10, 64 << 10))
        d = os.path.join(root, "www", f"d{i // 500:03}", f"e{(i // 50) % 10}")
        data = os.urandom(size // 2) + words(rng, size - size // 2)
        write(os.path.join(d, f"f{i:05}.dat"), data)
        left -= size
        i += 1
    print(f"{n} files, {total} bytes in {root}")


if __name__ == "__main__":
    main()
