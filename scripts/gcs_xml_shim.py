#!/usr/bin/env python3
"""A front for fake-gcs-server that adds the one XML-API call object_store needs and the
emulator lacks: the plain object upload.

object_store's GCS client uploads with the XML API, `PUT {base}/{bucket}/{object}` (the
object name percent-encoded), sending `x-goog-if-generation-match: 0` for a create-only
put. fake-gcs-server routes that PUT to its JSON-API insert, which answers 400 "invalid
uploadType" (fsouza/fake-gcs-server issue 331). This shim turns such a PUT into a JSON-API
multipart upload, `POST /upload/storage/v1/b/{bucket}/o?uploadType=multipart&name=...`,
with x-goog-if-generation-match passed on as `ifGenerationMatch` (the emulator honours it:
412 Precondition Failed when the object exists), and answers as the XML API does: 200 with
an empty body, ETag and x-goog-generation, or the emulator's error status (412 on a failed
precondition). Content-Type, the Cache-Control/Content-* headers and x-goog-meta-* go into
the object's metadata.

Every other request (GET, HEAD, DELETE, the XML list `GET /{bucket}?list-type=2`, the JSON
API, a signed-URL or multipart-part PUT, a copy) is passed through unchanged, Host header
included: run fake-gcs-server with `-public-host 127.0.0.1:LISTEN_PORT`, the Host the
clients send here, so that it serves the XML API on it.

Standard library only. Each request is logged to stderr, with the status answered.

usage: gcs_xml_shim.py LISTEN_PORT BACKEND_PORT   (both on 127.0.0.1)
"""
import http.client
import json
import sys
import urllib.parse
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

if len(sys.argv) != 3:
    sys.exit(__doc__)
LISTEN, BACKEND = int(sys.argv[1]), int(sys.argv[2])
# Headers of one connection, not of the request: not forwarded (Content-Length is set anew).
HOP = {"connection", "keep-alive", "transfer-encoding", "te", "upgrade",
       "proxy-connection", "content-length"}


class Shim(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt, *args):
        sys.stderr.write("shim: " + fmt % args + "\n")

    def body(self):
        """The request body, whole (Content-Length or chunked)."""
        n = self.headers.get("Content-Length")
        if n is not None:
            return self.rfile.read(int(n))
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            out = b""
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return out
                out += self.rfile.read(size)
                self.rfile.readline()
        return b""

    def send(self, status, headers, data, head=False):
        """Answers the client with the status, the end-to-end headers and the body."""
        self.send_response(status)
        length = str(len(data))
        for k, v in headers:
            if head and k.lower() == "content-length":
                length = v  # a HEAD answers with the object's size
            elif k.lower() not in HOP:
                self.send_header(k, v)
        self.send_header("Content-Length", length)
        self.end_headers()
        if not head:
            self.wfile.write(data)

    def backend(self, method, path, headers, data):
        """One request to the emulator, on a new connection: (status, headers, body)."""
        c = http.client.HTTPConnection("127.0.0.1", BACKEND, timeout=300)
        c.request(method, path, body=data if data or method in ("PUT", "POST") else None,
                  headers=headers)
        r = c.getresponse()
        out = r.read()
        c.close()
        return r.status, r.getheaders(), out

    def passthrough(self, method):
        data = self.body()
        hdrs = {k: v for k, v in self.headers.items() if k.lower() not in HOP}
        status, headers, out = self.backend(method, self.path, hdrs, data)
        self.send(status, headers, out, head=(method == "HEAD"))

    def xml_put(self, bucket, obj):
        """The XML API's object PUT, made as a JSON-API multipart upload."""
        data = self.body()
        gen = self.headers.get("x-goog-if-generation-match")
        ctype = self.headers.get("Content-Type", "application/octet-stream")
        meta = {"name": obj, "contentType": ctype}
        user = {k[len("x-goog-meta-"):]: v for k, v in self.headers.items()
                if k.lower().startswith("x-goog-meta-")}
        if user:
            meta["metadata"] = user
        for h, f in (("Cache-Control", "cacheControl"), ("Content-Encoding", "contentEncoding"),
                     ("Content-Disposition", "contentDisposition"),
                     ("Content-Language", "contentLanguage")):
            if self.headers.get(h):
                meta[f] = self.headers[h]
        b = uuid.uuid4().hex
        mp = (f"--{b}\r\nContent-Type: application/json; charset=UTF-8\r\n\r\n"
              f"{json.dumps(meta)}\r\n--{b}\r\nContent-Type: {ctype}\r\n\r\n").encode()
        mp += data + f"\r\n--{b}--\r\n".encode()
        q = {"uploadType": "multipart", "name": obj}
        if gen is not None:
            q["ifGenerationMatch"] = gen
        path = (f"/upload/storage/v1/b/{urllib.parse.quote(bucket, safe='')}/o?"
                + urllib.parse.urlencode(q))
        status, headers, out = self.backend(
            "POST", path, {"Host": self.headers.get("Host", ""),
                           "Content-Type": f"multipart/related; boundary={b}"}, mp)
        if status != 200:
            self.send(status, [("Content-Type", "application/xml")],
                      f"<Error><Code>{status}</Code><Message>{out.decode(errors='replace')}"
                      f"</Message></Error>".encode())
            return
        o = json.loads(out)
        self.send(200, [("ETag", '"%s"' % o.get("md5Hash", o.get("etag", ""))),
                        ("x-goog-generation", str(o.get("generation", ""))),
                        ("x-goog-metageneration", str(o.get("metageneration", "1")))], b"")

    def do_PUT(self):
        # A plain object PUT is `/{bucket}/{object}` with no signed-URL or multipart-part
        # parameters and no copy source; anything else is the emulator's to answer.
        u = urllib.parse.urlsplit(self.path)
        parts = u.path.lstrip("/").split("/", 1)
        q = urllib.parse.parse_qs(u.query)
        plain = (len(parts) == 2 and parts[1] and not parts[0].startswith(("upload", "storage"))
                 and "X-Goog-Algorithm" not in q and "uploadId" not in q
                 and "x-goog-copy-source" not in self.headers)
        if plain:
            self.xml_put(urllib.parse.unquote(parts[0]), urllib.parse.unquote(parts[1]))
        else:
            self.passthrough("PUT")

    def do_GET(self):
        self.passthrough("GET")

    def do_HEAD(self):
        self.passthrough("HEAD")

    def do_DELETE(self):
        self.passthrough("DELETE")

    def do_POST(self):
        self.passthrough("POST")

    def do_PATCH(self):
        self.passthrough("PATCH")


ThreadingHTTPServer.daemon_threads = True
ThreadingHTTPServer(("127.0.0.1", LISTEN), Shim).serve_forever()
