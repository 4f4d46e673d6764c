#!/usr/bin/env bash
# CI's check of the Debian package: builds it from the debug build the tests made
# (scripts/package.sh --profile dev: the packaging is what is checked, not a second
# build), unpacks it into a clean directory with dpkg -x, and uses what it installs:
# the binary runs, every man page renders, bash completes through the installed script,
# the systemd units and the documentation are where the README says; and `cargo install
# --path .` installs a binary that runs.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/package.sh --profile dev
deb=$(ls -t target/debian/coffer_*.deb | head -1)
root=$(mktemp -d -t coffer-deb-XXXXXX)
trap 'rm -rf "$root"' EXIT
dpkg -x "$deb" "$root"
fail() { echo "check-package: $*" >&2; exit 1; }
"$root/usr/bin/coffer" --version | grep -q '^coffer ' || fail "the binary does not run"
for page in "$root"/usr/share/man/man1/*.1.gz; do
    MANPAGER=cat MANWIDTH=80 man -l "$page" 2>&1 >/dev/null | grep . && fail "man -l $page warns"
    MANPAGER=cat man -l "$page" | grep -q SYNOPSIS || fail "$page does not render"
done
[ -e "$root/usr/share/man/man1/coffer-backup.1.gz" ] || fail "no coffer-backup(1)"
got=$(bash -c "source '$root/usr/share/bash-completion/completions/coffer'
    COMP_WORDS=(coffer bac); COMP_CWORD=1; _coffer coffer bac coffer; echo \"\${COMPREPLY[*]}\"")
[ "$got" = backup ] || fail "bash completion of 'coffer bac' gave '$got'"
for f in usr/share/zsh/vendor-completions/_coffer usr/share/fish/vendor_completions.d/coffer.fish \
    lib/systemd/system/coffer-backup@.service lib/systemd/system/coffer-backup@.timer \
    lib/systemd/system/coffer-status.service lib/systemd/system/coffer-status.timer \
    usr/share/doc/coffer/config.example.toml usr/share/doc/coffer/README.md \
    usr/share/doc/coffer/copyright; do
    [ -s "$root/$f" ] || fail "$f is missing or empty"
done
dpkg-deb --field "$deb" Depends | grep -q libssl || fail "Depends lacks libssl"
# The README's other way: cargo install --path . (--debug reuses the tests' build).
cargo install -q -j2 --path . --debug --locked --root "$root/cargo" 2>/dev/null
"$root/cargo/bin/coffer" --version | grep -q '^coffer ' || fail "cargo install --path . gave no coffer"
echo "check-package: $deb unpacks, runs, renders its pages and completes ($(du -h "$deb" | cut -f1))"
