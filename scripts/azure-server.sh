#!/usr/bin/env bash
# A real Azure Blob Storage emulator for the tests: Azurite 3.35.0 (Blob service only) on
# 127.0.0.1, with Shared Key and SAS authentication enforced.
#
#   scripts/azure-server.sh start DIR   install (once) and start; writes DIR/azure.env
#   scripts/azure-server.sh stop DIR    stop it
#
# Azurite 3.35.0 is pinned because it is the newest 3.x that runs on the machine's Node.js
# 20 (3.36.0 wants Node >= 21, 3.37.0 Node >= 22). It is installed with npm into
# COFFER_AZURE_PREFIX (default ~/.cache/coffer/azurite), which takes 10-15 s once.
#
# The emulator has one account, Azurite's well-known development account devstoreaccount1
# with its published key, and gets a container `coffer-test` and a service SAS for that
# container allowing only Create and Write ('cw') on blobs, valid for a day: the put-only
# credential, like S3's put-only IAM user (it may store, not read, list or delete; what
# keeps it from overwriting is coffer's If-None-Match: *, and on Azure itself blob
# versioning or an immutability policy). Before writing DIR/azure.env the script checks
# what Azurite enforces for that SAS and fails if any of it is not: a PUT of a new blob
# succeeds; a second PUT with If-None-Match: * is 409 BlobAlreadyExists (what coffer takes
# as "already stored"); GET, HEAD, LIST and DELETE are refused, 403
# AuthorizationPermissionMismatch.
#
# Why not a Create-only ('c') SAS, which cannot overwrite at all: with it Azurite refuses
# any PUT of an existing name with that same 403 AuthorizationPermissionMismatch, before
# looking at If-None-Match, so a create-only PUT cannot tell "already there" (a dedup hit,
# or the marker every run puts again) from "not allowed", and coffer's second run fails.
# Azure itself is reported to answer 403 UnauthorizedBlobOverwrite there (not checked
# here). Until that can be told apart, the README says to use 'cw'.
#
# DIR/azure.env holds KEY=VALUE lines the tests read: the endpoint (path style, the account
# in the first path segment), the account and its key, the container, the SAS query string
# (without '?') and the request log (Azurite's access log: one line per request, with the
# status). The values are not quoted: split each line at its first '=' (the SAS holds '&',
# so do not source the file).
#
# object_store options for a target here: azure_storage_account_name, azure_storage_endpoint
# (the endpoint above), azure_allow_http = "true", and azure_storage_account_key or, for the
# put-only host, azure_storage_sas_key (the SAS).
set -euo pipefail
cmd=${1:?usage: azure-server.sh start|stop DIR}
dir=$(realpath -m "${2:?usage: azure-server.sh start|stop DIR}")
prefix=${COFFER_AZURE_PREFIX:-$HOME/.cache/coffer/azurite}
version=3.35.0

. "$(dirname "$(realpath "$0")")/stop-server.sh"
stop() { stop_pidfile "$dir/azurite.pid"; }

case "$cmd" in
stop) stop; exit 0 ;;
start) stop ;;  # a second start replaces the first server
*) echo "usage: azure-server.sh start|stop DIR" >&2; exit 2 ;;
esac

# Every start is a new, empty emulator (as the S3 one is): what an earlier run stored goes.
rm -rf "$dir/data"
mkdir -p "$dir/data"
bin=$prefix/node_modules/.bin/azurite-blob
installed=$prefix/node_modules/azurite/package.json
if [ ! -x "$bin" ] || ! grep -qs "\"version\": \"$version\"" "$installed"; then
    echo "azure-server: installing azurite@$version into $prefix" >&2
    mkdir -p "$prefix"
    npm install --prefix "$prefix" --no-audit --no-fund --loglevel=error "azurite@$version" >&2
fi
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
# --skipApiVersionCheck: object_store may send an x-ms-version newer than this Azurite
# knows. --loose: ignore headers and parameters Azurite does not implement instead of
# answering 400. --disableTelemetry: Azurite otherwise sends usage data to Microsoft, and
# this machine must not talk to anything but the package registries. The access log
# (one line per request, with the status) goes to stdout, so to azurite.log.
"$bin" --blobHost 127.0.0.1 --blobPort "$port" --location "$dir/data" \
    --skipApiVersionCheck --loose --disableTelemetry >"$dir/azurite.log" 2>&1 &
echo $! >"$dir/azurite.pid"
endpoint="http://127.0.0.1:$port/devstoreaccount1"

ENDPOINT=$endpoint DIR=$dir python3 - <<'PY'
"""Waits for Azurite, creates the container and the create-only SAS, checks the SAS."""
import base64, datetime, hashlib, hmac, os, sys, time, uuid
import urllib.error, urllib.parse, urllib.request

endpoint, outdir = os.environ["ENDPOINT"], os.environ["DIR"]
account = "devstoreaccount1"
# Azurite's well-known development key (public, in Microsoft's documentation).
key = ("Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/"
       "K1SZFPTOtr/KBHBeksoGMGw==")
container = "coffer-test"
api = "2021-08-06"


def call(method, url, headers=None, body=b""):
    """The status of the request (an HTTP error is an answer too) and its error code."""
    # No body at all rather than an empty one: urllib would add a Content-Type (which
    # the signature covers); http.client still sends Content-Length: 0 on a PUT.
    req = urllib.request.Request(url, data=body or None, headers=headers or {},
                                 method=method)
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            r.read()
            return r.status, None
    except urllib.error.HTTPError as e:
        e.read()
        return e.code, e.headers.get("x-ms-error-code")


def shared_key(method, url, headers, length=0):
    """Adds the Shared Key Authorization header (Azure Storage's HMAC-SHA256 scheme)."""
    headers = dict(headers, **{"x-ms-date": time.strftime("%a, %d %b %Y %H:%M:%S GMT",
                                                          time.gmtime()),
                               "x-ms-version": api})
    u = urllib.parse.urlsplit(url)
    canon_headers = "".join(f"{k.lower()}:{v}\n" for k, v in sorted(headers.items())
                            if k.lower().startswith("x-ms-"))
    # Path style: the path already starts with /account, and the account comes again.
    resource = f"/{account}{u.path}" + "".join(
        f"\n{k.lower()}:{v}" for k, v in sorted(urllib.parse.parse_qsl(u.query)))
    get = lambda h: headers.get(h, "")
    to_sign = "\n".join([method, get("Content-Encoding"), get("Content-Language"),
                         str(length) if length else "", get("Content-MD5"),
                         get("Content-Type"), "", get("If-Modified-Since"), get("If-Match"),
                         get("If-None-Match"), get("If-Unmodified-Since"), get("Range")])
    to_sign += "\n" + canon_headers + resource
    sig = base64.b64encode(hmac.new(base64.b64decode(key), to_sign.encode(),
                                    hashlib.sha256).digest()).decode()
    headers["Authorization"] = f"SharedKey {account}:{sig}"
    return headers


# Wait until Azurite answers at all (an unauthenticated request gets a 4xx).
for _ in range(300):
    try:
        urllib.request.urlopen(endpoint + "?comp=list", timeout=1).read()
        break
    except urllib.error.HTTPError:
        break
    except Exception:
        time.sleep(0.1)
else:
    sys.exit("azure-server: Azurite did not start; see azurite.log")

url = f"{endpoint}/{container}?restype=container"
status, _ = call("PUT", url, shared_key("PUT", url, {}))
if status not in (201, 409):  # 409: it exists (a restart on the same DIR)
    sys.exit(f"azure-server: creating the container answered {status}")

# Service SAS (signed version >= 2020-12-06) for the container (sr=c), permissions Create
# and Write: no read, delete or list. No start time and no protocol: valid at once, over
# http too.
expiry = (datetime.datetime.now(datetime.timezone.utc)
          + datetime.timedelta(days=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
sv, sp, sr = "2022-11-02", "cw", "c"
# permissions, start, expiry, resource, identifier, IP, protocol, version, signed
# resource, snapshot time, encryption scope, then the five response header overrides.
to_sign = "\n".join([sp, "", expiry, f"/blob/{account}/{container}", "", "", "", sv, sr,
                     "", "", "", "", "", "", ""])
sig = base64.b64encode(hmac.new(base64.b64decode(key), to_sign.encode(),
                                hashlib.sha256).digest()).decode()
sas = urllib.parse.urlencode({"sv": sv, "sr": sr, "sp": sp, "se": expiry, "sig": sig})

# What the SAS may and may not do, on a probe blob that is deleted afterwards.
blob = f"{endpoint}/{container}/sas-probe-{uuid.uuid4().hex}"
put = {"x-ms-blob-type": "BlockBlob", "Content-Type": "application/octet-stream"}
# A refusal must be for the permission (403 AuthorizationPermissionMismatch), not for a
# signature Azurite could not check (403 AuthorizationFailure).
denied = (403, "AuthorizationPermissionMismatch")
checks = [
    ("PUT of a new blob", call("PUT", f"{blob}?{sas}", put, b"probe"), (201, None)),
    ("second PUT with If-None-Match: *",
     call("PUT", f"{blob}?{sas}", dict(put, **{"If-None-Match": "*"}), b"again"),
     (409, "BlobAlreadyExists")),
    ("GET", call("GET", f"{blob}?{sas}"), denied),
    ("HEAD", call("HEAD", f"{blob}?{sas}"), denied),
    ("LIST", call("GET", f"{endpoint}/{container}?restype=container&comp=list&{sas}"),
     denied),
    ("DELETE", call("DELETE", f"{blob}?{sas}"), denied),
]
bad = [f"{what}: {got}, expected {want}" for what, got, want in checks if got != want]
status, _ = call("DELETE", blob, shared_key("DELETE", blob, {}))
if status != 202:
    bad.append(f"deleting the probe with the account key: {status}, expected 202")
if bad:
    sys.exit("azure-server: the put-only SAS is not enforced as expected:\n  "
             + "\n  ".join(bad))

with open(os.path.join(outdir, "azure.env"), "w") as f:
    f.write(f"COFFER_TEST_AZURE_ENDPOINT={endpoint}\n")
    f.write(f"COFFER_TEST_AZURE_ACCOUNT={account}\n")
    f.write(f"COFFER_TEST_AZURE_KEY={key}\n")
    f.write(f"COFFER_TEST_AZURE_CONTAINER={container}\n")
    f.write(f"COFFER_TEST_AZURE_SAS={sas}\n")
    f.write(f"COFFER_TEST_AZURE_LOG={outdir}/azurite.log\n")
PY
echo "azure-server: Azurite on $endpoint, settings in $dir/azure.env" >&2
