"""A real headless Chromium driven over the DevTools protocol (aiohttp's websocket client).

`chromium --headless=new --remote-debugging-port=0` writes the port it chose to
DevToolsActivePort in its profile directory; we open the first page's websocket and send
commands (Page.navigate, Runtime.evaluate, Input.dispatchKeyEvent, Page.captureScreenshot).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


class BrowserError(RuntimeError):
    pass


class Page:
    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._reader = asyncio.ensure_future(self._read())

    async def _read(self) -> None:
        async for msg in self.ws:
            if msg.type != aiohttp.WSMsgType.TEXT:
                continue
            data = json.loads(msg.data)
            fut = self._pending.pop(data.get("id", -1), None)
            if fut is not None and not fut.done():
                fut.set_result(data)

    async def send(self, method: str, **params: Any) -> dict[str, Any]:
        mid = next(self._ids)
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[mid] = fut
        await self.ws.send_str(json.dumps({"id": mid, "method": method, "params": params}))
        reply = await asyncio.wait_for(fut, 30)
        if "error" in reply:
            raise BrowserError(f"{method}: {reply['error']}")
        return dict(reply.get("result", {}))

    async def eval(self, expression: str) -> Any:
        """The value of a JS expression (promises awaited), as JSON."""
        res = await self.send("Runtime.evaluate", expression=expression, awaitPromise=True,
                              returnByValue=True)
        if "exceptionDetails" in res:
            raise BrowserError(f"{expression!r}: {res['exceptionDetails']}")
        return res["result"].get("value")

    async def wait(self, expression: str, timeout: float = 15.0, interval: float = 0.05) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            value = await self.eval(expression)
            if value:
                return value
            if time.monotonic() > deadline:
                raise TimeoutError(f"never true in the page within {timeout} s: {expression}")
            await asyncio.sleep(interval)

    async def goto(self, url: str, width: int = 1280, height: int = 900) -> None:
        await self.send("Emulation.setDeviceMetricsOverride", width=width, height=height,
                        deviceScaleFactor=1, mobile=False)
        await self.send("Page.enable")
        await self.send("Page.navigate", url=url)
        await self.wait("document.readyState === 'complete'")

    async def key(self, key: str) -> None:
        """A real key press (keydown + keyup) delivered to whatever has the focus."""
        codes = {"Enter": 13, "Escape": 27, "Tab": 9, "ArrowDown": 40, "ArrowUp": 38}
        common = {"key": key, "code": key, "windowsVirtualKeyCode": codes.get(key, 0)}
        text = {"text": "\r"} if key == "Enter" else {}
        await self.send("Input.dispatchKeyEvent", type="keyDown", **common, **text)
        await self.send("Input.dispatchKeyEvent", type="keyUp", **common)

    async def screenshot(self, path: Path) -> Path:
        res = await self.send("Page.captureScreenshot", format="png")
        path.write_bytes(base64.b64decode(res["data"]))
        return path

    async def close(self) -> None:
        self._reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._reader
        await self.ws.close()


def _port(profile: Path, proc: subprocess.Popen[bytes], timeout: float) -> int:
    deadline = time.monotonic() + timeout
    marker = profile / "DevToolsActivePort"
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise BrowserError(f"chromium exited with {proc.returncode}")
        with contextlib.suppress(OSError, ValueError, IndexError):
            return int(marker.read_text().split()[0])
        time.sleep(0.05)
    raise BrowserError(f"chromium did not open its DevTools port in {timeout} s")


@contextlib.asynccontextmanager
async def chromium(
    timeout: float = 30.0, on_pid: Callable[[int], None] | None = None
) -> AsyncIterator[Page]:
    """A fresh headless Chromium (own profile, no network beyond what the page loads)."""
    with tempfile.TemporaryDirectory(prefix="ca-chromium-") as tmp:
        profile = Path(tmp)
        proc = subprocess.Popen(
            [CHROMIUM, "--headless=new", "--remote-debugging-port=0",
             f"--user-data-dir={profile}", "--no-sandbox", "--no-first-run",
             "--no-default-browser-check", "--disable-gpu", "--disable-extensions",
             "--disable-background-networking", "--disable-component-update",
             "--disable-dev-shm-usage", "--hide-scrollbars", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        )
        if on_pid is not None:
            on_pid(proc.pid)
        try:
            port = await asyncio.to_thread(_port, profile, proc, timeout)
            async with aiohttp.ClientSession() as http:
                async with http.get(f"http://127.0.0.1:{port}/json/list") as r:
                    targets = await r.json()
                page_ws = next(t["webSocketDebuggerUrl"] for t in targets if t["type"] == "page")
                ws = await http.ws_connect(page_ws, max_msg_size=64 << 20)
                page = Page(ws)
                try:
                    yield page
                finally:
                    await page.close()
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            # Its helpers (renderer, utility) may still write into the profile: end the
            # session it was started in (ours alone) before the profile is removed.
            await asyncio.to_thread(_end_session, proc.pid)


def _end_session(sid: int, timeout: float = 10.0) -> None:
    """SIGKILL what is left of the session `sid` (chromium's, started by us) and wait until
    none of it runs."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        left = _session_members(sid)
        if not left:
            return
        for pid in left:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.05)


def _session_members(sid: int) -> list[int]:
    """Pids in session `sid` that are not zombies (a zombie holds no file open)."""
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        with contextlib.suppress(OSError, IndexError, ValueError):
            fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
            if int(fields[3]) == sid and fields[0] != "Z":  # session id, state
                out.append(int(entry))
    return out
