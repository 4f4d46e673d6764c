#!/usr/bin/env bash
# restore-with-gpg.sh [--setid] [--devices] [--signer CERT] TARGET_DIR METAFILE DEST
#
# Restores one coffer run without coffer: with GnuPG, b3sum and coreutils only. It is
# the procedure of docs/FORMAT.md ("Restoring without coffer") written out, and
# documentation as much as a tool: read it next to that file.
#
#   TARGET_DIR  the target folder (the one holding data/ and runs/)
#   METAFILE    the run's metafile as stored: TARGET_DIR/runs/<host>/<source>/<run>.meta
#               (a large one's further pieces, <run>.meta.0002 ..., are read after it,
#               and the whole is checked against the BLAKE3 its <run>.refs records)
#   DEST        where to restore: a new or empty directory (created mode 0700; this
#               script resolves paths, so nobody else may write below it meanwhile)
#   --setid     keep the setuid and setgid bits of files (default: dropped, and named)
#   --devices   create device nodes (default: not created, and named)
#   --signer CERT  require the run's object list to carry a good signature by this
#               certificate (the host's NAME.sign.pub.asc; repeatable), checked with gpgv
#               against a keyring of these certificates alone; the metafile is then
#               bound to it through the BLAKE3 the list records
#
# gpg decrypts with the secret keys of the current keyring ($GNUPGHOME, else ~/.gnupg):
# import the key first, e.g. `gpg --import admin.key.asc` (a passphrase is asked by
# gpg-agent and cached; without a terminal unlock the key first, see docs/FORMAT.md).
#
# Every message is decrypted by gpg and accepted only if gpg's status output reports a
# successful decryption with an intact MDC (DECRYPTION_OKAY and GOODMDC): `gpg -d`
# alone exits 0 on a plaintext message, which anyone could plant. Decryption output is
# bounded (--max-output), so no message can inflate without limit. Every chunk is checked
# against its recorded BLAKE3 and size, and every file against its whole-file BLAKE3 and
# size. A file that fails a check is named on standard error
# and left out (never half-written); the rest is restored and the exit status is 1.
# Paths that are absolute or have empty, `.` or `..` components are refused. Symbolic
# links are created last, so nothing is ever written through a link this script made.
# Owners are restored only when run as root. Chunks with encoding `zstd` also need zstd.
set -euo pipefail
export LC_ALL=C # bytes are bytes: no locale may reinterpret file names

me=restore-with-gpg
setid='' devices='' signers=() keyring=()
while [[ ${1:-} == --* ]]; do
    case $1 in
    --setid) setid=yes ;;
    --devices) devices=yes ;;
    --signer)
        [[ $# -ge 2 ]] || { echo "$me: --signer needs a certificate file" >&2; exit 2; }
        signers+=("$2")
        shift
        ;;
    *) echo "$me: unknown option $1" >&2; exit 2 ;;
    esac
    shift
done
if [[ $# -ne 3 ]]; then
    echo "usage: $0 [--setid] [--devices] [--signer CERT] TARGET_DIR METAFILE DEST" >&2
    exit 2
fi
target=$1 metafile=$2 dest=$3

die() { # die MESSAGE: the metafile or the setup is unusable; stop at once
    printf '%s: %s\n' "$me" "$*" >&2
    exit 1
}

failures=0 stripped=0
fail() { # fail PATH REASON: this entry is not restored; go on with the others
    printf '%s: %s: %s\n' "$me" "$(printf '%q' "$1")" "$2" >&2
    failures=$((failures + 1))
}

[[ -d $target/data ]] || die "$target is not a coffer target (no data/ folder)"
[[ -f $metafile ]] || die "$metafile: no such file"

if [[ -e $dest || -L $dest ]]; then
    [[ -d $dest && ! -L $dest && -z $(ls -A -- "$dest") ]] ||
        die "$dest exists and is not an empty directory"
fi

work=$(mktemp -d) # private (mode 700): holds decrypted data
trap 'rm -rf -- "$work"' EXIT

# decrypt IN OUT MAX: gpg -d of the message IN into OUT, at most MAX bytes of output.
# Accepted only if gpg reports a decryption (DECRYPTION_OKAY) with an intact integrity
# check (GOODMDC): a plaintext message decrypts to nothing of the sort. Sets `why`.
# A signed message (a metafile of a host with a signing key) is checked too: a bad
# signature (BADSIG) is refused; one gpg cannot check for want of the signer's
# certificate (NO_PUBKEY, exit status 2) is left to the checks against the object list.
decrypt() {
    local status=$work/gpg.status rc=0
    gpg --batch -q --status-fd 4 --max-output "$3" "${keyring[@]}" -d <"$1" >"$2" \
        2>"$work/gpg.err" 4>"$status" || rc=$?
    if [[ $rc -ne 0 ]] && ! { [[ $rc -eq 2 ]] &&
        grep -q '^\[GNUPG:\] NO_PUBKEY ' -- "$status" &&
        grep -q '^\[GNUPG:\] DECRYPTION_OKAY' -- "$status"; }; then
        why="gpg cannot decrypt it: $(head -n 1 -- "$work/gpg.err")"
        return 1
    fi
    if ! grep -q '^\[GNUPG:\] DECRYPTION_OKAY' -- "$status" ||
        ! grep -q '^\[GNUPG:\] GOODMDC' -- "$status" ||
        grep -q '^\[GNUPG:\] \(BADMDC\|DECRYPTION_FAILED\|NODATA\)' -- "$status"; then
        why="not an encrypted message with an intact integrity check (it may have been planted)"
        return 1
    fi
    if grep -q '^\[GNUPG:\] \(BADSIG\|EXPKEYSIG\|REVKEYSIG\)' -- "$status"; then
        why="its signature does not check out ($(grep -m1 '^\[GNUPG:\] \(BADSIG\|EXPKEYSIG\|REVKEYSIG\)' -- "$status" | cut -d' ' -f2-))"
        return 1
    fi
}

# --- 1. Decrypt the metafile and check its first and last lines -------------------------
# A large metafile is stored in pieces: <run>.meta, then <run>.meta.0002, ... in order.
shopt -s nullglob
pieces=("$metafile".[0-9][0-9][0-9][0-9])
shopt -u nullglob
cat -- "$metafile" "${pieces[@]}" >"$work/stored.meta"
refs=${metafile%.meta}.refs
if [[ ${#signers[@]} -gt 0 ]]; then
    # Only these certificates: a keyring of their own, so that no key of the user's
    # keyring vouches for a run.
    for c in "${signers[@]}"; do
        gpg --batch -q --dearmor <"$c" >>"$work/signers.gpg" || die "$c: not an OpenPGP certificate"
        # Primary fingerprints, which gpg's VALIDSIG names last.
        gpg --batch --with-colons --import-options show-only --import <"$c" 2>/dev/null |
            awk -F: '$1 == "pub" { p = 1 } $1 == "fpr" && p { print $10; p = 0 }' >>"$work/signers.fpr"
    done
    keyring=(--keyring "$work/signers.gpg")
    [[ -f $refs && -f $refs.sig ]] || die "$refs.sig: the run is not signed (its object list or signature is missing)"
    gpgv --keyring "$work/signers.gpg" --status-fd 4 "$refs.sig" "$refs" \
        4>"$work/gpgv.status" 2>"$work/gpgv.err" &&
        grep -q '^\[GNUPG:\] VALIDSIG ' -- "$work/gpgv.status" ||
        die "$refs: no good signature by the signers given ($(head -n 1 -- "$work/gpgv.err"))"
    grep -q '^metafile [0-9a-f]\{64\} ' -- "$refs" || die "$refs records no metafile digest"
fi
if [[ -f $refs ]] && read -r recorded < <(sed -n 's/^metafile \([0-9a-f]\{64\}\) .*/\1/p' -- "$refs"); then
    [[ $(b3sum --no-names <"$work/stored.meta") == "$recorded" ]] ||
        die "$metafile does not match the BLAKE3 its object list $refs records (damaged, truncated or replaced)"
fi
# DEFLATE inflates at most about 1032-fold; nothing coffer writes needs more output.
metafile_max=$(($(stat -c %s -- "$work/stored.meta") * 1100 + (1 << 20)))
decrypt "$work/stored.meta" "$work/metafile" "$metafile_max" ||
    die "$metafile: $why (is the secret key in the keyring?)"
# A signed metafile (gpg reported a signature: NEWSIG) must be signed by a signer given.
if [[ ${#signers[@]} -gt 0 ]] && grep -q '^\[GNUPG:\] NEWSIG' -- "$work/gpg.status"; then
    signed_by=$(awk '$2 == "VALIDSIG" { print $NF }' "$work/gpg.status")
    [[ -n $signed_by ]] && grep -qxF -- "$signed_by" "$work/signers.fpr" ||
        die "$metafile: its signature is not a good one by the signers given"
fi
keyring=() # chunks are not signed
exec 3<"$work/metafile" # the listing is read line by line from fd 3

lineno=0
next_line() { # next_line VAR: reads the next line of the listing into VAR
    IFS= read -r "$1" <&3 || return 1
    lineno=$((lineno + 1))
}
corrupt() { die "metafile line $lineno: $*"; }

next_line line || die "the metafile is empty"
case $line in
"coffer-metafile 1") ;;
"coffer-metafile "*) die "metafile version ${line#* } is newer than this script reads (1)" ;;
*) die "not a coffer metafile (first line: $line)" ;;
esac
last=$(tail -n 1 -- "$work/metafile")
[[ $last =~ ^end\ [0-9]+\ [0-9]+$ ]] ||
    die "the metafile is truncated (its last line is not an end line)"

# --- Field decoding --------------------------------------------------------------------

# decode FIELD VAR: percent-decoding. Every byte outside ! .. ~ and every % is %XX in
# the metafile; a field that is just % is the empty string. Literal backslashes are
# doubled first so that printf %b turns only our \xXX sequences into bytes; printf -v
# keeps trailing newlines, which $(...) would strip.
decode() {
    local s=$1
    if [[ $s == % ]]; then
        printf -v "$2" '%s' ''
        return
    fi
    local rest=${s//\%[0-9A-Fa-f][0-9A-Fa-f]/}
    [[ $rest != *%* ]] || corrupt "bad percent-encoding in $s"
    [[ $s != *%00* ]] || corrupt "a NUL byte in $s"
    s=${s//\\/\\\\}
    s=${s//\%/\\x}
    printf -v "$2" '%b' "$s"
}

# safe_path PATH: a restored path must stay inside DEST: relative, no empty, `.` or
# `..` components (the root itself is `.`).
safe_path() {
    [[ $1 == . ]] && return 0
    [[ /$1/ != *//* && /$1/ != */./* && /$1/ != */../* ]]
}

# touch_date MTIME VAR: the metafile's mtime, SECONDS.NANOSECONDS, means
# SECONDS + NANOSECONDS/10^9 with 0 <= NANOSECONDS < 10^9, so -2.750000000 is -1.25 s;
# touch -d @-2.75 would read it as -2.75 s. Rewrite negative times as a plain decimal.
touch_date() {
    local s=${1%.*} n=$((10#${1#*.}))
    if ((s < 0 && n > 0)); then
        printf -v "$2" '@-%d.%09d' $((-(s + 1))) $((1000000000 - n))
    else
        printf -v "$2" '@%s' "$1"
    fi
}

# check_meta MODE UID GID USER GROUP MTIME: the six metadata fields are well-formed.
check_meta() {
    [[ $1 =~ ^[0-7]{1,4}$ && $2 =~ ^[0-9]+$ && $3 =~ ^[0-9]+$ && $6 =~ ^-?[0-9]+\.[0-9]{9}$ ]] ||
        corrupt "bad metadata: $*"
    local name
    [[ $4 == - ]] || decode "$4" name
    [[ $5 == - ]] || decode "$5" name
}

# set_meta PATH "MODE UID GID USER GROUP MTIME" [link]: owner (as root: by name if the
# name exists here, else by number), mode (not for symlinks), then mtime.
set_meta() {
    local p=$1 link=${3:-} mode uid gid user group mtime when
    read -r mode uid gid user group mtime <<<"$2"
    if ((EUID == 0)); then
        [[ $user == - ]] || decode "$user" user
        [[ $group == - ]] || decode "$group" group
        { [[ $user != - ]] && chown -h -- "$user" "$p" 2>/dev/null; } ||
            chown -h -- "$uid" "$p" || return 1
        { [[ $group != - ]] && chgrp -h -- "$group" "$p" 2>/dev/null; } ||
            chgrp -h -- "$gid" "$p" || return 1
    fi
    if [[ -z $link ]]; then
        mode=$((8#$mode))
        if [[ -z $setid && ! -d $p ]] && ((mode & 8#6000)); then
            mode=$((mode & ~8#6000))
            stripped=$((stripped + 1))
        fi
        # five octal digits: GNU chmod keeps a directory's setgid bit unless told exactly
        chmod -- "$(printf '%05o' "$mode")" "$p" || return 1
    fi
    touch_date "$mtime" when
    touch -h -d "$when" -- "$p"
}

# free PATH: nothing is at PATH yet (existing files are never replaced).
free() { [[ ! -e $1 && ! -L $1 ]]; }

# --- 2. The header: "KEY VALUE" lines up to an empty line; unknown keys are ignored -----
header_host=? header_source=? header_run=?
while true; do
    next_line line || corrupt "truncated header"
    [[ -n $line ]] || break
    key=${line%% *} value=${line#* }
    [[ $line == *" "* ]] || value=% # no value: the empty string
    case $key in
    host | source | run) decode "$value" "header_$key" ;;
    esac
done
printf '%s: run %s of source %s from host %s -> %s\n' "$me" "$header_run" \
    "$header_source" "$header_host" "$dest" >&2

mkdir -p -m 0700 -- "$dest"

# --- 3. Regular files --------------------------------------------------------------------

# fetch_chunk OBJECT OFFSET LENGTH SIZE HASH ENCODING OUT: cuts the chunk's OpenPGP
# message out of its pack, decrypts it, undoes the encoding and checks size and BLAKE3.
# On failure sets `why`.
fetch_chunk() {
    local object=$1 offset=$2 length=$3 size=$4 hash=$5 encoding=$6 out=$7
    local pack=$target/data/${object:0:2}/$object
    local what="chunk at $offset+$length of object $object"
    if [[ ! -f $pack ]]; then
        why="object $object is missing from the target"
        return 1
    fi
    # tail -c +N starts at byte N (1-based); head -c takes the message's length.
    tail -c "+$((offset + 1))" -- "$pack" 2>/dev/null | head -c "$length" >"$work/message" || true
    if [[ $(stat -c %s -- "$work/message") != "$length" ]]; then
        why="$what: the object is truncated"
        return 1
    fi
    # A raw chunk decrypts to SIZE bytes, a zstd one to at most its message's length.
    local max=$size
    [[ $encoding == raw ]] || max=$length
    if ! decrypt "$work/message" "$out" "$((max + 1))"; then
        why="$what: $why"
        return 1
    fi
    case $encoding in
    raw) ;;
    zstd)
        # Never more than SIZE bytes: a forged frame cannot fill the disk.
        if ! zstd -d -q -c <"$out" | head -c "$((size + 1))" >"$work/plain"; then
            why="$what: cannot decompress it"
            return 1
        fi
        mv -- "$work/plain" "$out"
        ;;
    esac
    if [[ $(stat -c %s -- "$out") != "$size" ||
        $(b3sum --no-names <"$out") != "$hash" ]]; then
        why="$what: content does not match its recorded BLAKE3"
        return 1
    fi
}

# restore_file PATH SIZE HASH CHUNK-LINE...: writes the chunks in order to a temporary
# file next to PATH, checks the whole file, then renames it into place.
restore_file() {
    local path=$1 size=$2 hash=$3
    shift 3
    local tmp
    tmp=$(mktemp -p "${path%/*}" .coffer-restore-XXXXXX) || {
        why="cannot create a temporary file"
        return 1
    }
    local chunk
    for chunk in "$@"; do
        # shellcheck disable=SC2086 # the chunk line's six fields become arguments
        if ! fetch_chunk $chunk "$work/chunk"; then
            rm -f -- "$tmp"
            return 1
        fi
        cat -- "$work/chunk" >>"$tmp" || {
            rm -f -- "$tmp"
            why="cannot write"
            return 1
        }
    done
    if [[ $(stat -c %s -- "$tmp") != "$size" || $(b3sum --no-names <"$tmp") != "$hash" ]]; then
        rm -f -- "$tmp"
        why="restored content does not match the file's recorded BLAKE3"
        return 1
    fi
    mv -T -- "$tmp" "$path"
}

# --- 4. The listing ----------------------------------------------------------------------
nat='^[0-9]+$' hex64='^[0-9a-f]{64}$'
entries=0 bytes=0 ended=''
dirs=() dir_metas=()                              # directory metadata: applied last
links=() link_kinds=() link_targets=() link_metas=() # hard, then symbolic links: after files

while next_line line; do
    read -r -a f <<<"$line"
    kind=${f[0]:-}
    case $kind in
    end)
        [[ ${#f[@]} -eq 3 && ${f[1]} =~ $nat && ${f[2]} =~ $nat &&
            10#${f[1]} -eq entries && 10#${f[2]} -eq bytes ]] ||
            corrupt "end line says ${f[*]:1}, the listing has $entries entries, $bytes bytes"
        ended=yes
        break
        ;;
    dir | fifo) want=8 ;;
    symlink) want=9 ;;
    chardev | blockdev) want=10 ;;
    file) want=11 ;;
    hardlink) want=3 ;;
    *) corrupt "unknown record type '$kind'" ;;
    esac
    [[ ${#f[@]} -eq $want ]] || corrupt "$kind: expected $want fields, found ${#f[@]}"
    entries=$((entries + 1))
    decode "${f[1]}" path
    [[ $kind == hardlink ]] || check_meta "${f[@]:2:6}"
    if [[ $kind == chardev || $kind == blockdev ]]; then
        [[ ${f[8]} =~ $nat && ${f[9]} =~ $nat ]] || corrupt "bad device numbers"
    fi
    meta="${f[*]:2:6}"

    if [[ $kind == file ]]; then
        size=${f[8]} hash=${f[9]} nchunks=${f[10]}
        [[ $size =~ $nat && $hash =~ $hex64 && $nchunks =~ $nat ]] || corrupt "bad file record"
        size=$((10#$size)) nchunks=$((10#$nchunks))
        bytes=$((bytes + size))
        chunks=() sum=0
        for ((i = 0; i < nchunks; i++)); do
            next_line line || corrupt "truncated: chunk line expected"
            read -r -a c <<<"$line"
            [[ ${#c[@]} -eq 7 && ${c[0]} == chunk && ${c[1]} =~ $hex64 && ${c[2]} =~ $nat &&
                ${c[3]} =~ $nat && ${c[4]} =~ $nat && ${c[5]} =~ $hex64 ]] ||
                corrupt "bad chunk line"
            [[ ${c[6]} == raw || ${c[6]} == zstd ]] || corrupt "unknown chunk encoding ${c[6]}"
            # object offset length size hash encoding, numbers without leading zeros
            chunks+=("${c[1]} $((10#${c[2]})) $((10#${c[3]})) $((10#${c[4]})) ${c[5]} ${c[6]}")
            sum=$((sum + 10#${c[4]}))
        done
        ((sum == size)) || corrupt "chunks add up to $sum, file size $size"
    fi

    if ! safe_path "$path"; then
        fail "$path" "refused: absolute path, or an empty, '.' or '..' component"
        continue
    fi
    p=$dest/$path
    if [[ $path != . ]] && ! mkdir -p -- "${p%/*}"; then
        fail "$path" "cannot create its parent directory"
        continue
    fi

    case $kind in
    dir)
        if [[ -d $p && ! -L $p ]] || mkdir -- "$p"; then
            dirs+=("$p") dir_metas+=("$meta")
        else
            fail "$path" "cannot create the directory"
        fi
        ;;
    file)
        if ! free "$p"; then
            fail "$path" "exists; not replaced"
        elif ! restore_file "$p" "$size" "$hash" "${chunks[@]}"; then
            fail "$path" "$why"
        elif ! set_meta "$p" "$meta"; then
            fail "$path" "cannot set owner, mode or mtime"
        fi
        ;;
    chardev | blockdev)
        if [[ -z $devices ]]; then
            fail "$path" "device node not created (pass --devices to create device nodes)"
        elif ! free "$p"; then
            fail "$path" "exists; not replaced"
        elif ! mknod -- "$p" "${kind:0:1}" "$((10#${f[8]}))" "$((10#${f[9]}))"; then
            fail "$path" "cannot create the device"
        elif ! set_meta "$p" "$meta"; then
            fail "$path" "cannot set owner, mode or mtime"
        fi
        ;;
    fifo)
        if ! free "$p"; then
            fail "$path" "exists; not replaced"
        elif ! mkfifo -- "$p"; then
            fail "$path" "cannot create the fifo"
        elif ! set_meta "$p" "$meta"; then
            fail "$path" "cannot set owner, mode or mtime"
        fi
        ;;
    symlink | hardlink)
        if [[ $kind == symlink ]]; then
            decode "${f[8]}" link_target
        else
            decode "${f[2]}" link_target
        fi
        if [[ $kind == hardlink ]] && ! safe_path "$link_target"; then
            fail "$path" "refused hard link target: absolute, or an empty, '.' or '..' component"
            continue
        fi
        links+=("$p") link_kinds+=("$kind") link_targets+=("$link_target") link_metas+=("$meta")
        ;;
    esac
done
[[ $ended ]] || corrupt "truncated: no end line"
if next_line line; then
    corrupt "data after the end line"
fi

# --- 5. Links (hard links first, then symbolic links), then directory metadata ----------
for kind in hardlink symlink; do
    for i in "${!links[@]}"; do
        [[ ${link_kinds[i]} == "$kind" ]] || continue
        p=${links[i]} t=${link_targets[i]}
        if ! free "$p"; then
            fail "${p#"$dest/"}" "exists; not replaced"
        elif [[ $kind == hardlink ]]; then
            ln -T -- "$dest/$t" "$p" 2>/dev/null ||
                fail "${p#"$dest/"}" "cannot link to $(printf '%q' "$t") (not restored?)"
        elif ! ln -s -T -- "$t" "$p"; then
            fail "${p#"$dest/"}" "cannot create the symbolic link"
        elif ! set_meta "$p" "${link_metas[i]}" link; then
            fail "${p#"$dest/"}" "cannot set owner or mtime"
        fi
    done
done

# Deepest first: a directory's mtime is set after everything inside it is in place, and
# a read-only directory gets its mode only after it was filled. The listing puts every
# directory before its contents, so reverse listing order is deepest first.
for ((i = ${#dirs[@]} - 1; i >= 0; i--)); do
    p=${dirs[i]}
    if [[ -L $p || ! -d $p ]] || ! set_meta "$p" "${dir_metas[i]}"; then
        fail "${p#"$dest/"}" "cannot set the directory's owner, mode or mtime"
    fi
done

if ((stripped > 0)); then
    printf '%s: %d files restored without their setuid or setgid bits (pass --setid to keep them)\n' \
        "$me" "$stripped" >&2
fi
if ((failures > 0 || stripped > 0)); then
    printf '%s: %d of %d entries could not be restored (named above)\n' "$me" "$failures" "$entries" >&2
    exit 1
fi
printf '%s: restored %d entries (%d bytes of files) into %s\n' "$me" "$entries" "$bytes" "$dest" >&2
