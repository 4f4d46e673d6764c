#!/usr/bin/env bash
# Installs what building and testing coffer needs on a fresh Debian machine that has only
# Rust, gcc, python3 and pip: libclang (sequoia's OpenSSL backend runs bindgen), OpenSSL,
# GnuPG 2.2 (interop tests), zstd and b3sum (the gpg-only restore procedure), faketime
# (tests of clocks and key expiry), man-db and groff (the man pages are rendered in the
# tests), zsh and fish (their completion scripts are parsed; fish's is run) and systemd (systemd-analyze verify
# checks the units in contrib/systemd) and tmux (what a person sees in a terminal is
# tested in a tmux pane).
# Idempotent: installs only what is missing.
set -euo pipefail
need=()
for pkg in libclang-dev libssl-dev pkg-config gnupg zstd b3sum faketime man-db groff-base zsh fish systemd tmux; do
    dpkg -s "$pkg" >/dev/null 2>&1 || need+=("$pkg")
done
if [ ${#need[@]} -gt 0 ]; then
    SUDO=""
    [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    echo "setup: installing ${need[*]}" >&2
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
