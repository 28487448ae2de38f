"""A real OTLP/HTTP metrics receiver for tests: aiohttp on 127.0.0.1 in its own thread,
decoding each request with opentelemetry-proto.

    with otlp_receiver() as rx:
        ... point the agent at rx.endpoint ...
        rx.wait_for(lambda: len(rx.requests) >= 3)
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
    ExportMetricsServiceResponse,
)


@dataclass
class Received:
    request: ExportMetricsServiceRequest
    headers: dict[str, str]
    wall_ns: int
    #: What `on_request` returned when this request arrived (e.g. a kernel counter read then).
    probe: Any = None


@dataclass
class OtlpReceiver:
    endpoint: str = ""
    #: Accepted requests, decoded, in arrival order.
    requests: list[Received] = field(default_factory=list)
    #: Status codes to answer next (then 200), e.g. [503, 503] to exercise retries.
    statuses: list[int] = field(default_factory=list)
    #: Every status answered, in order.
    answered: list[int] = field(default_factory=list)
    #: Points to report as rejected in each 2xx answer (OTLP partial success).
    reject_points: int = 0
    #: Called in the receiver thread as each request arrives; its result is kept with it.
    on_request: Callable[[], Any] | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)

    def wait_for(self, predicate: Callable[[], Any], timeout: float = 60.0) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                value = predicate()
            if value:
                return value
            time.sleep(0.05)
        raise TimeoutError(f"OTLP receiver: condition not met in {timeout} s "
                           f"({len(self.requests)} requests, answered {self.answered})")

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()  # aiohttp undoes Content-Encoding: gzip itself
        with self.lock:
            status = self.statuses.pop(0) if self.statuses else 200
            self.answered.append(status)
        if status != 200:
            return web.Response(status=status, text="test receiver says no")
        if request.headers.get("Content-Type") != "application/x-protobuf":
            return web.Response(status=415, text="want application/x-protobuf")
        decoded = ExportMetricsServiceRequest()
        decoded.ParseFromString(body)
        probe = self.on_request() if self.on_request is not None else None
        with self.lock:
            self.requests.append(Received(decoded, dict(request.headers), time.time_ns(), probe))
        answer = ExportMetricsServiceResponse()
        if self.reject_points:
            answer.partial_success.rejected_data_points = self.reject_points
            answer.partial_success.error_message = "test receiver rejects some points"
        return web.Response(body=answer.SerializeToString(), content_type="application/x-protobuf")


@contextlib.contextmanager
def otlp_receiver() -> Iterator[OtlpReceiver]:
    rx = OtlpReceiver()
    loop = asyncio.new_event_loop()
    app = web.Application(client_max_size=64 << 20)
    app.router.add_post("/v1/metrics", rx.handle)
    runner = web.AppRunner(app)
    loop.run_until_complete(runner.setup())
    site = web.TCPSite(runner, "127.0.0.1", 0)
    loop.run_until_complete(site.start())
    port = runner.addresses[0][1]
    rx.endpoint = f"http://127.0.0.1:{port}"
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        yield rx
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.run_until_complete(runner.cleanup())
        loop.close()
