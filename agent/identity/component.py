"""Container names, images and labels from the runtimes themselves, cached outside the cycle.

Sources: docker's Engine API (its Unix socket; list + inspect at connect, then its event stream
refreshes a container at once on start, die, oom, pause, rename...), podman's API service (the
same compatible API, plus libpod's pod) or, when no service runs, containers/storage's metadata
on disk. New containers the discovery finds and the cache lacks are inspected from
`on_snapshot`. The collection cycle only reads the cache (`ctx.enrich_identity`), so a runtime
that is down or slow never delays it: names fall back to ids (cached names are kept), one
warning is logged per outage, and `container_agent_runtime_api_up{runtime}` says 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import Coroutine, Iterable, Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics_core import Metric

from agent.core.component import AgentContext, Component, Setting
from agent.identity.engine_api import (
    WATCHED_ACTIONS,
    EngineApiError,
    EngineClient,
    event_action,
    event_id,
)
from agent.identity.podman import PodmanStorage
from agent.identity.runtime_info import IdentityCache, RuntimeInfo
from agent.model.snapshot import Snapshot, WorkloadIdentity

log = logging.getLogger("agent.identity")

_HEX64 = re.compile(r"[0-9a-f]{64}")
#: Label keys cAdvisor mode exports as container_label_<key> unless configured otherwise.
DEFAULT_CADVISOR_LABELS = (
    "com.docker.compose.project", "com.docker.compose.service",
    "io.kubernetes.container.name", "io.kubernetes.pod.name", "io.kubernetes.pod.namespace",
)
#: Runtimes whose containers an API may name (runc: podman and docker run runc underneath).
_API_RUNTIMES = {"docker": ("docker", "runc", "unknown", ""), "podman": ("podman", "runc")}


def _positive(v: Any) -> str | None:
    return None if 0 < v <= 60 else "must be > 0 and <= 60 seconds"


def _strings(v: Any) -> str | None:
    return None if all(isinstance(x, str) and x for x in v) else "must be a list of strings"


def _candidate_id(w: WorkloadIdentity) -> str | None:
    """The container id an API could know this workload by."""
    if _HEX64.fullmatch(w.id):
        return w.id
    last = w.cgroup.rsplit("/", 1)[-1]
    return last if _HEX64.fullmatch(last) else None


class ApiWatch:
    """One runtime API: listing and event stream, reconnecting after an outage."""

    def __init__(self, client: EngineClient, cache: IdentityCache, ctx: AgentContext,
                 retry_s: float) -> None:
        self.client = client
        self.cache = cache
        self.ctx = ctx
        self.retry_s = retry_s
        self.up = False
        self.warned = False
        self.last_error = "not connected yet"
        #: Ids the runtime said it does not know (not asked again until it reconnects).
        self.unknown: set[str] = set()
        self._inflight: set[str] = set()

    @property
    def runtime(self) -> str:
        return self.client.runtime

    def down(self, error: str, seen_containers: bool = False) -> None:
        was_up, self.up, self.last_error = self.up, False, error
        if self.warned:
            return
        # podman has no daemon: a missing socket is normal there (storage metadata serves).
        if was_up or seen_containers or self.runtime == "docker" or self.client.socket.exists():
            self.warned = True
            log.warning("%s API unavailable (%s): its containers are named by id until it "
                        "answers (cached names kept)", self.runtime, error)

    def answered(self) -> None:
        """The API answered: it is up again (a later outage is warned about again)."""
        self.up, self.warned, self.last_error = True, False, ""

    async def run(self) -> None:
        while True:
            try:
                await self._connect_and_follow()
            except EngineApiError as e:
                self.down(e.message)
            except asyncio.CancelledError:
                raise
            except Exception as e:  # never let identity take the agent down
                log.exception("%s identity watch failed", self.runtime)
                self.down(f"{type(e).__name__}: {e}")
            await asyncio.sleep(self.retry_s)

    async def _connect_and_follow(self) -> None:
        ids = await self.client.list_ids()
        infos = [i for i in await asyncio.gather(*(self.client.inspect(c) for c in ids)) if i]
        self.cache.replace_runtime(self.runtime, infos)
        self.unknown.clear()
        if not self.up:
            log.info("%s API at %s: %d containers named", self.runtime, self.client.socket,
                     len(infos))
        self.answered()
        self.ctx.request_cycle()
        follow = asyncio.ensure_future(self._follow())
        try:
            # A runtime that hangs (stopped, overloaded) keeps the stream open but silent:
            # a ping every retry interval notices it.
            while not follow.done():
                await asyncio.wait({follow}, timeout=self.retry_s)
                if not follow.done():
                    await self.client.ping()
                    self.answered()
        finally:
            follow.cancel()
            with contextlib.suppress(asyncio.CancelledError, EngineApiError):
                await follow
        follow.result()
        raise EngineApiError(f"{self.runtime} event stream ended")

    async def _follow(self) -> None:
        async for ev in self.client.events():
            cid, action = event_id(ev), event_action(ev)
            if cid is None or action not in WATCHED_ACTIONS:
                continue
            if action == "destroy":
                self.cache.drop(cid)
            else:
                self.refresh(cid)

    def refresh(self, cid: str) -> None:
        """Inspect one container in the background (at most one call per id at a time)."""
        if cid in self._inflight:
            return
        self._inflight.add(cid)
        _spawn(self._refresh(cid))

    async def _refresh(self, cid: str) -> None:
        try:
            info = await self.client.inspect(cid)
        except EngineApiError as e:
            self.down(e.message)
            return
        finally:
            self._inflight.discard(cid)
        self.answered()
        if info is None:
            self.unknown.add(cid)
            self.cache.drop(cid)
            return
        if self.cache.get(info.id) != info:
            self.cache.put(info)
            self.ctx.request_cycle()  # a new or renamed container shows at once


_tasks: set[asyncio.Task[None]] = set()


def _spawn(coro: Coroutine[Any, Any, None]) -> None:
    task = asyncio.get_running_loop().create_task(coro)
    _tasks.add(task)
    task.add_done_callback(_tasks.discard)


class IdentityComponent(Component):
    name = "identity"
    settings: Mapping[str, Setting] = MappingProxyType({
        "docker_socket": Setting(str, "/run/docker.sock", "docker's Engine API socket; "
                                 "empty: do not ask docker"),
        "podman_socket": Setting(str, "/run/podman/podman.sock", "podman's API service "
                                 "socket; empty: storage metadata only"),
        "podman_storage": Setting(str, "/var/lib/containers/storage", "containers/storage "
                                  "root read when podman's API service is not running"),
        "api_timeout": Setting((int, float), 1.0, "seconds a runtime API may take to answer",
                               _positive),
        "retry_interval": Setting((int, float), 5.0, "seconds between reconnection attempts",
                                  _positive),
        "lxc_paths": Setting(list, ["/var/lib/lxc"], "LXC container directories (lxcpath) "
                             "freeze/thaw go through", _strings),
        "cadvisor_labels": Setting(list, list(DEFAULT_CADVISOR_LABELS), "label keys exported "
                                   "as container_label_<key> in cAdvisor mode", _strings),
    })

    def __init__(self) -> None:
        self.cache = IdentityCache()
        self.watches: dict[str, ApiWatch] = {}
        self.storage: PodmanStorage | None = None
        self.lxc_paths: tuple[Path, ...] = ()
        self.ctx: AgentContext | None = None
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self, ctx: AgentContext) -> None:
        from agent.exporters import cadvisor

        self.ctx = ctx
        conf = ctx.section(self.name)
        timeout = float(conf.get("api_timeout", 1.0))
        retry = float(conf.get("retry_interval", 5.0))
        for runtime in ("docker", "podman"):
            sock = str(conf.get(f"{runtime}_socket", ""))
            if sock:
                client = EngineClient(runtime, Path(sock), timeout)
                self.watches[runtime] = ApiWatch(client, self.cache, ctx, retry)
        storage = str(conf.get("podman_storage", ""))
        self.storage = PodmanStorage(Path(storage)) if storage else None
        self.lxc_paths = tuple(Path(p) for p in conf.get("lxc_paths", ["/var/lib/lxc"]))
        cadvisor.set_label_keys(conf.get("cadvisor_labels", DEFAULT_CADVISOR_LABELS))
        ctx.enrich_identity = self.cache.enrich
        self._tasks = [ctx.health.spawn(self.name, w.run(), name=f"{runtime} events")
                       for runtime, w in self.watches.items()]

    async def stop(self) -> None:
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        for w in self.watches.values():
            await w.client.close()

    def client(self, runtime: str) -> EngineClient | None:
        """The runtime's API client when its API answered last time."""
        w = self.watches.get(runtime)
        return w.client if w is not None and w.up else None

    async def on_snapshot(self, snapshot: Snapshot) -> None:
        self.cache.retain({w.identity.cgroup for w in snapshot.workloads.values()})
        unnamed = [w.identity for w in snapshot.workloads.values()
                   if self.cache.lookup(w.identity) is None]
        podman_seen = any(i.runtime == "podman" for i in unnamed)
        for runtime, watch in self.watches.items():
            mine = [i for i in unnamed if i.runtime in _API_RUNTIMES[runtime]]
            if not watch.up:
                fallback = runtime == "podman" and self.storage is not None
                if not fallback and any(i.runtime == runtime for i in mine):
                    watch.down(watch.last_error, seen_containers=True)
                continue
            candidates = {c for c in map(_candidate_id, mine) if c is not None}
            watch.unknown &= candidates  # remember refusals only for cgroups still here
            for cid in candidates - watch.unknown:
                watch.refresh(cid)
        podman_api = self.watches.get("podman")
        if self.storage is not None and (podman_api is None or not podman_api.up) and (
            podman_seen or self.cache.count("podman")
        ):
            infos = await asyncio.to_thread(self.storage.read)
            if infos is not None:
                self._merge_storage(infos)

    def _merge_storage(self, infos: Iterable[RuntimeInfo]) -> None:
        # What the API told us (labels, pod) is richer than the storage: keep it.
        merged = [self.cache.get(i.id) or i for i in infos]
        self.cache.replace_runtime("podman", merged)
        if self.ctx is not None:
            self.ctx.request_cycle()

    def metric_families(self, snapshot: Snapshot) -> Iterable[Metric]:
        up = GaugeMetricFamily("container_agent_runtime_api_up", "1 when the runtime's API "
                               "answered last time (names come from it)", labels=["runtime"])
        named = GaugeMetricFamily("container_agent_runtime_identities", "Containers the "
                                  "runtime named (cached)", labels=["runtime"])
        for runtime, watch in sorted(self.watches.items()):
            up.add_metric([runtime], 1 if watch.up else 0)
        for runtime in ("docker", "podman"):
            named.add_metric([runtime], self.cache.count(runtime))
        return [up, named]
