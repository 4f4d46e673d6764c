#!/usr/bin/env bash
# Builds the Debian package: target/debian/coffer_VERSION_ARCH.deb (cargo deb, with the
# metadata in Cargo.toml): the binary, man pages, completions for bash, zsh and fish
# (generated here from the binary), the systemd units and the documentation.
#
#   scripts/package.sh                 a release build, then the package
#   scripts/package.sh --profile dev   package the debug build the tests made (CI checks
#                                      the packaging that way without a second build)
#
# Install it with `dpkg -i target/debian/coffer_*.deb`; after scripts/setup.sh,
# `cargo install --path .` installs the binary alone.
set -euo pipefail
cd "$(dirname "$0")/.."
profile=release
if [ "${1:-}" = "--profile" ]; then profile=${2:?--profile NAME}; fi
case "$profile" in
dev) dir=debug ;;
*) dir=$profile ;;
esac
if ! cargo deb --version >/dev/null 2>&1; then
    echo "package: installing cargo-deb 3.8.0 (about a minute)" >&2
    cargo install cargo-deb --locked --version 3.8.0 -j2 >&2
fi
cargo build -j2 --profile "$profile" --bin coffer
mkdir -p target/completions
bin=target/$dir/coffer
"$bin" completions bash >target/completions/coffer.bash
"$bin" completions zsh >target/completions/_coffer
"$bin" completions fish >target/completions/coffer.fish
cargo deb --no-build --profile "$profile" --output target/debian/
