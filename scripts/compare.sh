#!/bin/sh
# Compares coffer with restic and borg on one tree, in alternating rounds, warm cache:
#   scripts/compare.sh TREE WORKDIR [ROUNDS]
# Needs a release build (cargo build --release); restic and borg (apt-get install restic
# borgbackup) are measured where installed, and left out, said once, where not. Prints "<tool> <step> <seconds> [<user> <sys>] <peak KB>"; coffer's
# steps also include a full restore, verify --data (every chunk decrypted and checked,
# nothing written) and verify --storage --read-data (every object hashed, no key).
set -eu
TREE=$1 W=$2 ROUNDS=${3:-3}
C=$(dirname "$0")/../target/release/coffer
export RESTIC_PASSWORD=x BORG_PASSPHRASE=x BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK=yes
mkdir -p "$W"
[ -f "$W/keys/coffer.pub.asc" ] || "$C" keygen --out "$W/keys" --no-passphrase >/dev/null
cat > "$W/c.toml" <<TOML
host = "compare"
state_dir = "$W/state"
[source.tree]
path = "$TREE"
recipients = ["$W/keys/coffer.pub.asc"]
targets = ["t"]
[target.t]
url = "file://$W/repo"
create = true
TOML
warm() { tar cf - "$TREE" 2>/dev/null | cat > /dev/null; sync; }
for i in $(seq "$ROUNDS"); do
  rm -rf "$W/state" "$W/repo"; warm
  /usr/bin/time -f "coffer first %e %U %S %M" "$C" -c "$W/c.toml" backup --json > /dev/null
  /usr/bin/time -f "coffer rerun %e %M" "$C" -c "$W/c.toml" backup --json > /dev/null
  rm -rf "$W/out"; sync
  /usr/bin/time -f "coffer restore %e %U %S %M" "$C" -c "$W/c.toml" restore --key "$W/keys/coffer.key.asc" --source tree --to "$W/out" > /dev/null
  rm -rf "$W/out"; sync
  /usr/bin/time -f "coffer verify-data %e %U %S %M" "$C" -c "$W/c.toml" verify --data --key "$W/keys/coffer.key.asc" --source tree > /dev/null
  /usr/bin/time -f "coffer verify-storage %e %U %S %M" "$C" -c "$W/c.toml" verify --storage --read-data > /dev/null
  if command -v restic >/dev/null; then
    rm -rf "$W/rrepo"; restic init -q --repo "$W/rrepo" > /dev/null; warm
    /usr/bin/time -f "restic first %e %U %S %M" restic -q --repo "$W/rrepo" backup "$TREE" > /dev/null
    /usr/bin/time -f "restic rerun %e %M" restic -q --repo "$W/rrepo" backup "$TREE" > /dev/null
  fi
  if command -v borg >/dev/null; then
    rm -rf "$W/brepo"; borg init -e repokey "$W/brepo" > /dev/null 2>&1; warm
    /usr/bin/time -f "borg first %e %U %S %M" borg create "$W/brepo::a" "$TREE" > /dev/null
    /usr/bin/time -f "borg rerun %e %M" borg create "$W/brepo::b" "$TREE" > /dev/null
  fi
done
for tool in restic borg; do
  command -v "$tool" >/dev/null || echo "$tool is not installed: left out" >&2
done
du -sm "$W/repo" $( [ -d "$W/rrepo" ] && echo "$W/rrepo") $( [ -d "$W/brepo" ] && echo "$W/brepo")
