#!/usr/bin/env bash
# The demo: installs what coffer needs, builds it, generates a key, backs up a sample
# tree to a local folder target, backs it up again (nothing new is stored), restores it
# and compares. Everything happens under ./demo (or $1).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(realpath -m "${1:-demo}")
scripts/setup.sh
cargo build --release -j2
coffer=$PWD/target/release/coffer

rm -rf "$root" && mkdir -p "$root"/{keys,sample}
echo "== a sample tree in $root/sample"
cp -r src docs "$root/sample/" 2>/dev/null || cp -r src "$root/sample/"
head -c 8M /dev/urandom > "$root/sample/random.bin"
printf 'name with spaces and a\nnewline\n' > "$root/sample/odd name"$'\n'"file"
ln -s random.bin "$root/sample/link-to-random"
ln "$root/sample/random.bin" "$root/sample/hardlink-to-random"
touch -d '2 days ago' "$root/sample/random.bin"   # old enough for the digest cache

cat > "$root/coffer.toml" <<TOML
state_dir = "state"

[source.sample]
path = "sample"
recipients = ["keys/demo.pub.asc"]
targets = ["folder"]

[target.folder]
url = "file://$root/target"
TOML

echo "== coffer keygen"
"$coffer" keygen --out "$root/keys" --name demo --no-passphrase
echo "== coffer init (a backup never creates a missing target folder by itself)"
"$coffer" init -c "$root/coffer.toml" folder
echo "== coffer backup (first run)"
"$coffer" backup -c "$root/coffer.toml"
echo "== coffer backup (no change: nothing new is stored)"
"$coffer" backup -c "$root/coffer.toml"
echo "== coffer runs"
"$coffer" runs -c "$root/coffer.toml"
echo "== coffer restore"
"$coffer" restore -c "$root/coffer.toml" --key "$root/keys/demo.key.asc" \
    --source sample --to "$root/restored"
echo "== compare"
diff -r --no-dereference "$root/sample" "$root/restored"
echo "demo OK: $root/restored matches $root/sample; the target is $root/target"
