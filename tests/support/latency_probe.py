"""GET one URL at a fixed rate, in a process of its own, until its stdin closes; then print
{"latency": [seconds, ...], "errors": n, "gzipped": n} as one JSON line.

The benchmarks' timed clients run here, not as threads of the benchmark: a thread sharing a GIL with
the benchmark's churn threads and body-reading fetchers measures its own waits for that GIL too.
Run: `python tests/support/latency_probe.py URL RATE [gzip]` (stdin open for as long as it
should run), or through `Probe` from a benchmark. With `gzip` it asks for a gzip body, as
Prometheus does on every scrape, and times its arrival; it does not decompress it (the
scraper's CPU, on the host's two cores here, elsewhere where Prometheus runs on another host).
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request


class Probe:
    """This script in a process of its own, GETting `url` at `rate` per second until finish()."""

    def __init__(self, url: str, rate: float, gzip: bool = False) -> None:
        self.proc = subprocess.Popen([sys.executable, __file__, url, str(rate),
                                      *(["gzip"] if gzip else [])],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.latency: list[float] = []
        self.errors = 0
        #: Answers that came gzipped.
        self.gzipped = 0

    def finish(self) -> None:
        out, _ = self.proc.communicate(input="", timeout=60)
        got = json.loads(out)
        self.latency, self.errors, self.gzipped = got["latency"], got["errors"], got["gzipped"]


def main() -> None:
    url, period = sys.argv[1], 1.0 / float(sys.argv[2])
    gzip = sys.argv[3:] == ["gzip"]
    req = urllib.request.Request(url, headers={"Accept-Encoding": "gzip"} if gzip else {})
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
            with urllib.request.urlopen(req, timeout=30) as resp:
                gzipped += resp.headers.get("Content-Encoding") == "gzip"
                resp.read()
        except urllib.error.HTTPError as e:  # a 503 (stale snapshot) is still an answer
            e.read()
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
