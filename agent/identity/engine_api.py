"""A small client of the Docker Engine API over its Unix socket (aiohttp UnixConnector).

Podman's API service speaks the same compatible API, so one client serves both runtimes;
for podman the libpod endpoints add what the compatible ones lack (the pod). Only what the
agent needs: list, inspect, the event stream, pause/unpause/kill. Every call is bounded by a
timeout; a refusal carries the runtime's own message.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any
from urllib.parse import quote

import aiohttp

from agent.identity.runtime_info import RuntimeInfo

#: Container actions that change what the agent shows (name, state, presence).
WATCHED_ACTIONS = frozenset(
    {"create", "start", "restart", "die", "oom", "pause", "unpause", "rename", "destroy",
     "update"}
)
_EVENT_FILTER = quote(json.dumps({"type": ["container"]}))
#: libpod's own endpoints exist only under a version prefix (4.0 is the oldest 4.x API).
_LIBPOD = "/v4.0.0/libpod"
#: An event line longer than this is not an event.
_MAX_LINE = 1 << 20


class EngineApiError(Exception):
    """The runtime answered with an error, or did not answer in time."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


def _str_map(v: object) -> Mapping[str, str]:
    if not isinstance(v, dict):
        return MappingProxyType({})
    return MappingProxyType({str(k): str(x) for k, x in v.items() if isinstance(x, str)})


def _opt_str(v: object) -> str | None:
    return v if isinstance(v, str) and v else None


def parse_inspect(runtime: str, doc: object) -> RuntimeInfo | None:
    """An inspect document (docker's, or podman's libpod one) -> RuntimeInfo."""
    if not isinstance(doc, dict) or not isinstance(doc.get("Id"), str):
        return None
    config = doc.get("Config") if isinstance(doc.get("Config"), dict) else {}
    assert isinstance(config, dict)
    restarts = doc.get("RestartCount")
    return RuntimeInfo(
        runtime=runtime,
        id=doc["Id"],
        name=str(doc.get("Name") or "").lstrip("/"),
        # docker: Config.Image is the reference as given; podman's libpod: ImageName.
        image=_opt_str(doc.get("ImageName")) or _opt_str(config.get("Image")),
        image_id=_opt_str(doc.get("Image")),
        labels=_str_map(config.get("Labels")),
        pod=_opt_str(doc.get("PodName")) or _opt_str(doc.get("Pod")),
        restart_count=restarts if isinstance(restarts, int) else None,
    )


class EngineClient:
    """One runtime's API socket. Create and use it on one event loop."""

    def __init__(self, runtime: str, socket: Path, timeout_s: float = 1.0) -> None:
        self.runtime = runtime
        self.socket = socket
        self.timeout_s = timeout_s
        self._session: aiohttp.ClientSession | None = None

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.UnixConnector(path=str(self.socket)),
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=self.timeout_s),
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def _request(self, method: str, path: str, timeout_s: float | None = None) -> Any:
        """One call; the decoded JSON body (None when empty). EngineApiError on any failure."""
        limit = self.timeout_s if timeout_s is None else timeout_s
        try:
            async with asyncio.timeout(limit):
                async with self._http().request(method, f"http://{self.runtime}{path}") as r:
                    body = await r.read()
        except (TimeoutError, aiohttp.ClientError, OSError) as e:
            raise self._unreachable(e, limit) from None
        doc: Any = None
        if body:
            try:
                doc = json.loads(body)
            except ValueError:
                doc = None
        if r.status >= 400:
            msg = doc.get("message") if isinstance(doc, dict) else None
            text = msg or body.decode(errors="replace").strip() or f"HTTP {r.status}"
            raise EngineApiError(f"{self.runtime}: {text}", r.status)
        return doc

    def _unreachable(self, e: BaseException, limit: float) -> EngineApiError:
        where = f"{self.runtime} API at {self.socket}"
        if isinstance(e, TimeoutError):
            return EngineApiError(f"{where} did not answer within {limit:g} s")
        return EngineApiError(f"{where}: {e}")

    async def ping(self) -> None:
        await self._request("GET", "/_ping")

    async def list_ids(self) -> list[str]:
        doc = await self._request("GET", "/containers/json?all=1")
        if not isinstance(doc, list):
            raise EngineApiError(f"{self.runtime}: container list is not a list")
        return [c["Id"] for c in doc if isinstance(c, dict) and isinstance(c.get("Id"), str)]

    async def inspect(self, cid: str) -> RuntimeInfo | None:
        """The container's record; None when the runtime does not know it (any more)."""
        path = f"/containers/{quote(cid)}/json"
        if self.runtime == "podman":
            path = _LIBPOD + path
        try:
            doc = await self._request("GET", path)
        except EngineApiError as e:
            if e.status == 404:
                return None
            raise
        info = parse_inspect(self.runtime, doc)
        if info is not None and self.runtime == "podman" and info.pod:
            info = await self._with_pod_name(info)
        return info

    async def _with_pod_name(self, info: RuntimeInfo) -> RuntimeInfo:
        assert info.pod is not None
        try:
            pod = await self._request("GET", f"{_LIBPOD}/pods/{quote(info.pod)}/json")
        except EngineApiError:
            return info
        name = pod.get("Name") if isinstance(pod, dict) else None
        if not isinstance(name, str) or not name:
            return info
        return RuntimeInfo(info.runtime, info.id, info.name, info.image, info.image_id,
                           info.labels, name, info.namespace, info.restart_count)

    async def events(self) -> AsyncIterator[dict[str, Any]]:
        """Container events as they happen, until the connection ends (then it returns)."""
        url = f"http://{self.runtime}/events?filters={_EVENT_FILTER}"
        try:
            async with asyncio.timeout(self.timeout_s):
                resp = await self._http().get(url)
        except (TimeoutError, aiohttp.ClientError, OSError) as e:
            raise self._unreachable(e, self.timeout_s) from None
        async with resp:
            if resp.status >= 400:
                raise EngineApiError(f"{self.runtime}: event stream HTTP {resp.status}")
            try:
                while True:
                    line = await resp.content.readline()
                    if not line:
                        return
                    if len(line) > _MAX_LINE:
                        continue
                    try:
                        ev = json.loads(line)
                    except ValueError:
                        continue
                    if isinstance(ev, dict):
                        yield ev
            except (aiohttp.ClientError, OSError) as e:
                raise EngineApiError(f"{self.runtime} event stream: {e}") from None

    async def pause(self, cid: str, timeout_s: float) -> None:
        await self._request("POST", f"/containers/{quote(cid)}/pause", timeout_s)

    async def unpause(self, cid: str, timeout_s: float) -> None:
        await self._request("POST", f"/containers/{quote(cid)}/unpause", timeout_s)

    async def kill(self, cid: str, timeout_s: float) -> None:
        await self._request("POST", f"/containers/{quote(cid)}/kill?signal=KILL", timeout_s)

    async def paused(self, cid: str, timeout_s: float) -> bool | None:
        """State.Paused as the runtime reports it; None when it does not know the id."""
        try:
            doc = await self._request("GET", f"/containers/{quote(cid)}/json", timeout_s)
        except EngineApiError as e:
            if e.status == 404:
                return None
            raise
        state = doc.get("State") if isinstance(doc, dict) else None
        return bool(state.get("Paused")) if isinstance(state, dict) else None


def event_id(ev: Mapping[str, Any]) -> str | None:
    """The container id of a container event (docker and podman spell it differently)."""
    actor = ev.get("Actor")
    if isinstance(actor, dict) and isinstance(actor.get("ID"), str):
        return str(actor["ID"])
    v = ev.get("id")
    return v if isinstance(v, str) else None


def event_action(ev: Mapping[str, Any]) -> str:
    action = ev.get("Action") or ev.get("status") or ""
    # "exec_start: sh" and the like: the action is the first word.
    return str(action).split(":", 1)[0].strip()
