"""GET one URL at a fixed rate, in a process of its own, until its stdin closes; then print
{"latency": [seconds, ...], "errors": n, "gzipped": n} as one JSON line.

Two clients: `keepalive` (the default) keeps one HTTP/1.1 connection open and times from the
request's send to the body's last byte, as a scraper does (Prometheus reuses its connection
between scrapes); its request is prepared once and it parses only the status line and the
Content-Length, so the figure is the agent's answer and the host's scheduling, not this client's
parsing. `urllib` opens a connection per request through urllib.request (headers parsed by
email.parser): what a script polling the agent sees, its own CPU included.

The benchmarks' timed clients run here, not as threads of the benchmark: a thread sharing a GIL with
the benchmark's churn threads and body-reading fetchers measures its own waits for that GIL too.
Run: `python tests/support/latency_probe.py URL RATE [gzip] [urllib]` (stdin open for as long
as it should run), or through `Probe` from a benchmark. With `gzip` it asks as Prometheus 2.x
does on every scrape (PROMETHEUS_ACCEPT: OpenMetrics first, and a gzip body), and times the
arrival of the body; it does not decompress it (the scraper's CPU, on the host's two cores
here, elsewhere where Prometheus runs on another host).
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request

#: The Accept header of Prometheus 2.42's scrapes.
PROMETHEUS_ACCEPT = ("application/openmetrics-text;version=1.0.0,"
                     "application/openmetrics-text;version=0.0.1;q=0.75,"
                     "text/plain;version=0.0.4;q=0.5,*/*;q=0.1")

class Probe:
    """This script in a process of its own, GETting `url` at `rate` per second until finish()."""

    def __init__(self, url: str, rate: float, gzip: bool = False, client: str = "keepalive"
                 ) -> None:
        self.proc = subprocess.Popen([sys.executable, __file__, url, str(rate),
                                      *(["gzip"] if gzip else []),
                                      *(["urllib"] if client == "urllib" else [])],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.latency: list[float] = []
        self.errors = 0
        #: Answers that came gzipped.
        self.gzipped = 0

    def finish(self) -> None:
        out, _ = self.proc.communicate(input="", timeout=60)
        got = json.loads(out)
        self.latency, self.errors, self.gzipped = got["latency"], got["errors"], got["gzipped"]


class KeepAliveGet:
    """GET over one kept HTTP/1.1 connection (opened again after an error or a close)."""

    def __init__(self, url: str, gzip: bool) -> None:
        parts = urllib.parse.urlsplit(url)
        self.addr = (parts.hostname or "127.0.0.1", parts.port or 80)
        self.request = (f"GET {parts.path or '/'} HTTP/1.1\r\nHost: {parts.netloc}\r\n"
                        + (f"Accept: {PROMETHEUS_ACCEPT}\r\nAccept-Encoding: gzip\r\n"
                           if gzip else "") + "\r\n").encode()
        self.sock: socket.socket | None = None

    def get(self) -> bool:
        """One answer read in full; True if it came gzipped. OSError: no answer."""
        if self.sock is None:
            self.sock = socket.create_connection(self.addr, timeout=30)
            self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            self.sock.sendall(self.request)
            buf = b""
            while b"\r\n\r\n" not in buf:
                buf += self._recv()
            head, body = buf.split(b"\r\n\r\n", 1)
            fields = {k.strip().lower(): v.strip() for k, _, v in
                      (line.partition(b":") for line in head.split(b"\r\n")[1:])}
            length = int(fields[b"content-length"])
            while len(body) < length:
                body += self._recv()
            if fields.get(b"connection", b"").lower() == b"close":
                self.close()
            return fields.get(b"content-encoding") == b"gzip"
        except (OSError, KeyError, ValueError) as e:
            self.close()
            raise OSError(f"no answer: {e!r}") from e

    def _recv(self) -> bytes:
        assert self.sock is not None
        data = self.sock.recv(1 << 20)
        if not data:
            raise OSError("connection closed")
        return data

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None


def _urllib_get(req: urllib.request.Request) -> bool:
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            zipped = resp.headers.get("Content-Encoding") == "gzip"
            resp.read()
            return zipped
    except urllib.error.HTTPError as e:  # a 503 (stale snapshot) is still an answer
        e.read()
        return False


def main() -> None:
    url, period = sys.argv[1], 1.0 / float(sys.argv[2])
    gzip = "gzip" in sys.argv[3:]
    if "urllib" in sys.argv[3:]:
        req = urllib.request.Request(url, headers={"Accept": PROMETHEUS_ACCEPT,
                                                   "Accept-Encoding": "gzip"} if gzip else {})

        def get() -> bool:
            return _urllib_get(req)
    else:
        get = KeepAliveGet(url, gzip).get
    stop = threading.Event()

    def wait_for_eof() -> None:
        sys.stdin.read()
        stop.set()

    threading.Thread(target=wait_for_eof, daemon=True).start()
    latency: list[float] = []
    errors = gzipped = 0
    due = time.monotonic()
    while not stop.is_set():
        t0 = time.perf_counter()
        try:
            gzipped += get()
        except OSError:
            errors += 1
            stop.wait(0.05)
            continue
        latency.append(time.perf_counter() - t0)
        due += period
        stop.wait(max(0.0, due - time.monotonic()))
    print(json.dumps({"latency": latency, "errors": errors, "gzipped": gzipped}))


if __name__ == "__main__":
    main()
