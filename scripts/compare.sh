#!/bin/sh
# Compares coffer with restic and borg on one tree, in alternating rounds, warm cache:
#   scripts/compare.sh TREE WORKDIR [ROUNDS] [DUMPS]
# Needs a release build (cargo build --release); restic and borg (apt-get install restic
# borgbackup) are measured where installed, and left out, said once, where not.
# Prints "<tool> <step> <seconds> <user> <sys> <peak KB>" per step and round:
#   first, rerun       a first backup of TREE, then one with nothing changed;
#   restore, one-file  the whole tree, and ONE_FILE (default kernel/sched/core.c, a
#                      path relative to TREE), restored into RESTORE_DIR (default
#                      WORKDIR; /dev/shm takes the disk out of the figures);
#   two-targets        coffer only: a first backup to two folder targets at once;
#   verify-data, verify-storage   coffer only: every chunk decrypted and checked, and
#                      every object hashed without a key.
# With DUMPS, a directory holding dump1.sql and dump2.sql (scripts/gen-dump.py makes a
# seeded pair), each tool backs up dump1 then dump2 as standard input, and the growth of
# its repository from the first to the second is printed as "<tool> dump-growth <bytes>"
# (coffer: as a stream source, whose chunks default to 16/64/256 KiB, and as a tree
# file with the tree defaults, 256 KiB/1 MiB/4 MiB).
set -eu
TREE=$1 W=$2 ROUNDS=${3:-3} DUMPS=${4:-}
C=$(dirname "$0")/../target/release/coffer
ONE_FILE=${ONE_FILE:-kernel/sched/core.c}
R=${RESTORE_DIR:-$W}
export RESTIC_PASSWORD=x BORG_PASSPHRASE=x BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK=yes
mkdir -p "$W"
[ -f "$W/keys/coffer.pub.asc" ] || "$C" keygen --out "$W/keys" --no-passphrase >/dev/null
config() { # config FILE TARGETS...
  f=$1; shift
  {
    printf 'host = "compare"\nstate_dir = "%s/state"\n[source.tree]\npath = "%s"\n' "$W" "$TREE"
    printf 'recipients = ["%s/keys/coffer.pub.asc"]\ntargets = [' "$W"
    sep=""; for t in "$@"; do printf '%s"%s"' "$sep" "$t"; sep=", "; done; printf ']\n'
    for t in "$@"; do printf '[target.%s]\nurl = "file://%s/%s"\ncreate = true\n' "$t" "$W" "$t"; done
  } > "$f"
}
config "$W/c.toml" repo
config "$W/c2.toml" repo repo2
has() { command -v "$1" >/dev/null; }
warm() { tar cf - "$TREE" 2>/dev/null | cat > /dev/null; sync; }
timed() { l=$1; shift; /usr/bin/time -f "$l %e %U %S %M" "$@"; }
K="$W/keys/coffer.key.asc"
for i in $(seq "$ROUNDS"); do
  rm -rf "$W/state" "$W/repo" "$W/repo2"; warm
  timed "coffer first" "$C" -c "$W/c.toml" backup --json > /dev/null
  timed "coffer rerun" "$C" -c "$W/c.toml" backup --json > /dev/null
  rm -rf "$R/out"; sync
  timed "coffer restore" "$C" -c "$W/c.toml" restore --key "$K" --source tree --to "$R/out" > /dev/null
  rm -rf "$R/out"; sync
  timed "coffer one-file" "$C" -c "$W/c.toml" restore --key "$K" --source tree --to "$R/out" "$ONE_FILE" > /dev/null
  rm -rf "$R/out"; sync
  timed "coffer verify-data" "$C" -c "$W/c.toml" verify --data --key "$K" --source tree > /dev/null
  timed "coffer verify-storage" "$C" -c "$W/c.toml" verify --storage --read-data > /dev/null
  rm -rf "$W/state" "$W/repo" "$W/repo2"; sync
  timed "coffer two-targets" "$C" -c "$W/c2.toml" backup --json > /dev/null
  if has restic; then
    rm -rf "$W/rrepo"; restic init -q --repo "$W/rrepo" > /dev/null; warm
    timed "restic first" restic -q --repo "$W/rrepo" backup "$TREE" > /dev/null
    timed "restic rerun" restic -q --repo "$W/rrepo" backup "$TREE" > /dev/null
    rm -rf "$R/rout"; sync
    timed "restic restore" restic -q --repo "$W/rrepo" restore latest --target "$R/rout" > /dev/null
    rm -rf "$R/rout"; sync
    timed "restic one-file" restic -q --repo "$W/rrepo" restore latest --target "$R/rout" --include "$TREE/$ONE_FILE" > /dev/null
    rm -rf "$R/rout"
  fi
  if has borg; then
    rm -rf "$W/brepo"; borg init -e repokey "$W/brepo" > /dev/null 2>&1; warm
    timed "borg first" borg create "$W/brepo::a" "$TREE" > /dev/null
    timed "borg rerun" borg create "$W/brepo::b" "$TREE" > /dev/null
    rm -rf "$R/bout"; mkdir -p "$R/bout"; sync
    (cd "$R/bout" && timed "borg restore" borg extract "$W/brepo::a" > /dev/null)
    rm -rf "$R/bout"; mkdir -p "$R/bout"; sync
    (cd "$R/bout" && timed "borg one-file" borg extract "$W/brepo::a" "${TREE#/}/$ONE_FILE" > /dev/null)
    rm -rf "$R/bout"
  fi
done
for tool in restic borg; do has "$tool" || echo "$tool is not installed: left out" >&2; done
du -sm "$W/repo" $( [ -d "$W/rrepo" ] && echo "$W/rrepo") $( [ -d "$W/brepo" ] && echo "$W/brepo")

[ -n "$DUMPS" ] || exit 0
size() { du -sb "$1" | cut -f1; }
growth() { # growth TOOL REPO: backs up dump1 then dump2 with backup_dump, prints the growth
  backup_dump "$DUMPS/dump1.sql"; a=$(size "$2")
  backup_dump "$DUMPS/dump2.sql"; b=$(size "$2")
  echo "$1 dump-growth $((b - a)) (first $a)"
}
D="$W/dumps"; rm -rf "$D"; mkdir -p "$D/tree"
cat > "$D/c.toml" <<TOML
host = "compare"
state_dir = "$D/state"
[source.db]
stdin = true
stream_name = "db.sql"
recipients = ["$W/keys/coffer.pub.asc"]
targets = ["t"]
[source.file]
path = "$D/tree"
recipients = ["$W/keys/coffer.pub.asc"]
targets = ["t2"]
[target.t]
url = "file://$D/repo"
create = true
[target.t2]
url = "file://$D/repo2"
create = true
TOML
backup_dump() { "$C" -c "$D/c.toml" backup db --stdin --json < "$1" > /dev/null; }
growth "coffer(stream)" "$D/repo"
backup_dump() { cp "$1" "$D/tree/db.sql"; "$C" -c "$D/c.toml" backup file --json > /dev/null; }
growth "coffer(tree-file)" "$D/repo2"
meta=$(ls -l "$D"/repo/runs/compare/db/*.meta | awk '{ s += $5 } END { print s / NR }')
echo "coffer(stream) metafile-per-run $meta index $(size "$D/state")"
if has restic; then
  restic init -q --repo "$D/rrepo" > /dev/null
  backup_dump() { restic -q --repo "$D/rrepo" backup --stdin --stdin-filename db.sql < "$1" > /dev/null; }
  growth restic "$D/rrepo"
fi
if has borg; then
  borg init -e repokey "$D/brepo" > /dev/null 2>&1
  n=0; backup_dump() { n=$((n + 1)); borg create "$D/brepo::d$n" - < "$1" > /dev/null; }
  growth borg "$D/brepo"
fi
