"""A misbehaving local HTTP mirror (127.0.0.1) serving a tiny dataset, for the fetch tests.

GET /<behaviour>/<file name>.gz: ``good`` serves the file; every other behaviour fails in one way,
and :data:`BAD_MIRRORS` maps each to the words its error message must contain.
"""

import gzip
import hashlib
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest

from mnist_classification.data.datasets import FILE_NAMES, DatasetSpec, FileSpec
from mnist_classification.data.idx import encode_idx

TIMEOUT = 0.4


def _tiny_payloads() -> dict[str, bytes]:
    rng = np.random.default_rng(7)
    arrays = [rng.integers(0, 256, (4, 28, 28), dtype=np.uint8), np.array([0, 1, 2, 9], np.uint8),
              rng.integers(0, 256, (3, 28, 28), dtype=np.uint8), np.array([3, 4, 5], np.uint8)]
    return {name: encode_idx(a) for name, a in zip(FILE_NAMES, arrays)}


PAYLOADS = _tiny_payloads()
SPEC = DatasetSpec(
    name="tiny",
    files=tuple(FileSpec(n, len(p), hashlib.sha256(p).hexdigest()) for n, p in PAYLOADS.items()),
    mirrors=(),
    classes=tuple(str(d) for d in range(10)),
)


class _Handler(BaseHTTPRequestHandler):
    """GET /<behaviour>/<file name>.gz; see do_GET for the behaviours."""

    def log_message(self, *args):
        pass

    def _send(self, code, body, ctype="application/gzip", length=None):
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body) if length is None else length))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        kind, _, name = self.path.lstrip("/").partition("/")
        payload = PAYLOADS.get(name.removesuffix(".gz"))
        if payload is None:
            return self._send(404, b"no such file", "text/plain")
        good = gzip.compress(payload, mtime=0)
        state = self.server.state
        if kind == "good":
            self._send(200, good)
        elif kind == "notfound":
            self._send(404, b"<html>Not Found</html>", "text/html")
        elif kind == "error":
            self._send(500, b"oops", "text/plain")
        elif kind == "flaky":  # 500 on the first request for each file, then fine
            with state["lock"]:
                first = name not in state["flaky"]
                state["flaky"].add(name)
            self._send(500, b"try later", "text/plain") if first else self._send(200, good)
        elif kind == "stall":
            state["release"].wait(10)
        elif kind == "stallbody":
            self.send_response(200)
            self.send_header("Content-Length", str(len(good)))
            self.end_headers()
            self.wfile.write(good[:10])
            self.wfile.flush()
            state["release"].wait(10)
        elif kind == "short":  # promise more than is sent, then close
            self._send(200, good[: len(good) // 2], length=len(good) + 1000)
        elif kind == "wrong":
            self._send(200, gzip.compress(bytes(reversed(payload)), mtime=0))
        elif kind == "bomb":
            self._send(200, gzip.compress(payload + bytes(1_000_000), mtime=0))
        elif kind == "loop":
            self.send_response(302)
            self.send_header("Location", f"/loop/{name}")
            self.send_header("Content-Length", "0")
            self.end_headers()
        elif kind == "redirect":
            self.send_response(301)
            self.send_header("Location", f"/good/{name}")
            self.send_header("Content-Length", "0")
            self.end_headers()
        elif kind == "html":
            self._send(200, b"<!DOCTYPE html><html><body>Please log in</body></html>", "text/html; charset=utf-8")
        elif kind == "htmlbin":  # an HTML page mislabelled as binary
            self._send(200, b"  <!DOCTYPE html><html><body>Error</body></html>", "application/octet-stream")
        elif kind == "nolength":  # HTTP/1.0 style: no Content-Length, the body ends when the connection closes
            self.send_response(200)
            self.send_header("Content-Type", "application/gzip")
            self.end_headers()
            self.wfile.write(good)
            self.close_connection = True
        elif kind == "garbage":
            self._send(200, b"PK\x03\x04 definitely not gzip", "application/octet-stream")
        else:
            self._send(404, b"unknown behaviour", "text/plain")


@pytest.fixture(scope="module")
def server():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.daemon_threads = True
    httpd.state = {"release": threading.Event(), "flaky": set(), "lock": threading.Lock()}
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.state["release"].set()
    httpd.shutdown()
    httpd.server_close()


BAD_MIRRORS = {
    "notfound": "HTTP 404",
    "error": "HTTP 500",
    "stall": "timed out",
    "stallbody": "timed out",
    "short": "truncated body",
    "wrong": "checksum mismatch",
    "bomb": "decompresses to more than",
    "loop": "redirect loop",
    "html": "HTML page",
    "htmlbin": "HTML page",
    "garbage": "not a gzip file",
}
