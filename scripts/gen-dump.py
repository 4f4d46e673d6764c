#!/usr/bin/env python3
"""A database dump pair, for measuring how much a nightly dump grows a repository.

    scripts/gen-dump.py OUT_DIR [SIZE_MB] [CHANGES]

Makes a seeded SQLite database of about SIZE_MB (default 1024) of dump text, writes its
dump (the sqlite3 shell's `.dump`, through Python's iterdump) to OUT_DIR/dump1.sql,
then applies CHANGES (default 1100) row changes spread uniformly over the table (60%
UPDATEs, 20% INSERTs into gaps, 20% DELETEs) and writes OUT_DIR/dump2.sql. Same seed,
same files: the measurement can be repeated anywhere.
"""
import os
import random
import sqlite3
import sys

ROW_BYTES = 166  # about what one INSERT line of the table below takes


def main():
    out = sys.argv[1]
    size_mb = int(sys.argv[2]) if len(sys.argv) > 2 else 1024
    changes = int(sys.argv[3]) if len(sys.argv) > 3 else 1100
    os.makedirs(out, exist_ok=True)
    rng = random.Random(20261207)
    rows = size_mb * 1024 * 1024 // ROW_BYTES
    db = sqlite3.connect(":memory:")
    db.execute(
        "CREATE TABLE orders (id INTEGER PRIMARY KEY, customer TEXT, email TEXT,"
        " amount INTEGER, status TEXT, note TEXT, created TEXT)"
    )
    statuses = ["new", "paid", "shipped", "returned", "cancelled"]
    words = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu".split()

    def row(i):
        name = "".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(10))
        return (
            i,
            name.capitalize() + " " + rng.choice(words).capitalize(),
            name + "@example.com",
            rng.randrange(100, 10_000_000),
            rng.choice(statuses),
            " ".join(rng.choice(words) for _ in range(8)),
            "2026-%02d-%02d %02d:%02d:%02d"
            % (
                rng.randrange(1, 13),
                rng.randrange(1, 29),
                rng.randrange(24),
                rng.randrange(60),
                rng.randrange(60),
            ),
        )

    # Even ids only, so INSERTs can land in the gaps, spread over the table.
    batch = []
    for n in range(rows):
        batch.append(row(2 * n))
        if len(batch) == 50_000:
            db.executemany("INSERT INTO orders VALUES (?,?,?,?,?,?,?)", batch)
            batch = []
    db.executemany("INSERT INTO orders VALUES (?,?,?,?,?,?,?)", batch)
    db.commit()
    dump(db, os.path.join(out, "dump1.sql"))

    for k in range(changes):
        # Uniformly over the table: the k-th change in the k-th slice of ids.
        slot = (k * rows) // changes + rng.randrange(max(1, rows // changes))
        kind = k % 5
        if kind < 3:
            db.execute(
                "UPDATE orders SET status = ?, amount = amount + 1 WHERE id = ?",
                (rng.choice(statuses), 2 * slot),
            )
        elif kind == 3:
            db.execute("INSERT INTO orders VALUES (?,?,?,?,?,?,?)", row(2 * slot + 1))
        else:
            db.execute("DELETE FROM orders WHERE id = ?", (2 * slot,))
    db.commit()
    dump(db, os.path.join(out, "dump2.sql"))


def dump(db, path):
    with open(path, "w") as f:
        for line in db.iterdump():
            f.write(line + "\n")
    print(path, os.path.getsize(path), "bytes", file=sys.stderr)


if __name__ == "__main__":
    main()
