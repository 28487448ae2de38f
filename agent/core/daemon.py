"""agentd: one asyncio loop that collects snapshots, serves them, and hosts the components."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from types import MappingProxyType
from typing import Any

from aiohttp import web

from agent.api.read import ReadApi
from agent.api.timing import ApiTiming
from agent.cli.args import OneLineParser
from agent.core.component import AgentContext, Component
from agent.core.config import DEFAULT_CONFIG_PATH, AgentConfig, ConfigError, load_config
from agent.core.exit_codes import ExitCode
from agent.core.hostinfo import read_host_info
from agent.core.loop_selector import new_event_loop
from agent.core.process_limits import (
    CycleCollector,
    freeze_long_lived,
    limit_malloc_arenas,
    raise_nofile_limit,
    trim_malloc,
    tune_gc,
)
from agent.core.registry import builtin_components
from agent.core.store import Store
from agent.events.lifecycle import identify
from agent.exporters.exposition import MetricsRenderer, metrics_options
from agent.identity.discovery import Discovery
from agent.kernel.cgroup_watch import CgroupWatcher
from agent.kernel.collection import Collector
from agent.kernel.fd_budget import OUT_OF_FDS, budget_families
from agent.kernel.tree_changes import PendingTreeChanges
from agent.model.snapshot import HostInfo, Snapshot, WorkloadIdentity
from collectors.cgroupfs import CgroupReader
from collectors.layout import CgroupLayout, LayoutError, detect_layout

log = logging.getLogger("agent")

#: Seconds each component gets to stop at shutdown.
STOP_TIMEOUT_S = 5
#: GIL hand-over interval (Python's default: 5 ms).
SWITCH_INTERVAL_S = 0.0005


def _net_totals(snapshot: Snapshot) -> dict[str, tuple[int, int]] | None:
    net = snapshot.extras.get("network")
    totals = getattr(net, "totals_by_workload", None)
    return dict(totals) if totals is not None else None


class Agent:
    def __init__(
        self, config: AgentConfig, layout: CgroupLayout, components: list[Component]
    ) -> None:
        self.config = config
        self.layout = layout
        self.components = components
        self.store = Store(config.state_dir / "agent.db", int(config["store_queue_size"]))
        self.reader = CgroupReader(layout)
        self.collector = Collector(Discovery(layout), self.reader,
                                   enrich=lambda w: self.ctx.enrich_identity(w))
        self.renderer = MetricsRenderer(bool(config["cadvisor"]), components,
                                        metrics_options(config.values))
        self.snapshot: Snapshot | None = None
        self.started = time.monotonic()
        self._wake = asyncio.Event()
        self._stopping = asyncio.Event()
        self._host: HostInfo | None = None
        #: The one kernel watch; the events component listens to its per-cgroup changes.
        self.watcher = CgroupWatcher(layout, identify)
        self.watcher.tree_listeners.append(self._on_tree_change)
        self._runners: list[web.AppRunner] = []
        self.timing = ApiTiming()
        self._last_rescan = 0.0
        #: Workloads inotify added while a cycle ran; the cycle's result must include them.
        self._added_during_cycle: list[WorkloadIdentity] = []
        self._cycles_gc = CycleCollector()
        #: Tree changes not applied yet, merged: one task applies them, one take at a time
        #: (no lost updates).
        self._pending = PendingTreeChanges()
        self._applying: asyncio.Task[None] | None = None
        self.ctx = AgentContext(
            config=config.values,
            state_dir=config.state_dir,
            layout=layout,
            store=self.store,
            latest=lambda: self.snapshot,
            request_cycle=self._wake.set,
            reader=self.reader,
            watcher=self.watcher,
        )
        self.ctx.components.update({c.name: c for c in components})
        self.notifier = _notifier()

    # -- lifecycle -----------------------------------------------------------------------
    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        self.ctx.loop = loop
        health = self.ctx.health
        for comp in list(self.components):
            health.register(comp.name)
            try:
                await comp.start(self.ctx)
            except Exception as e:
                # One capability failing (no netlink, no PSI...) must not take the agent down.
                log.error("component %s disabled: failed to start: %s", comp.name, e)
                health.fault(comp.name, "start", str(e) or repr(e))
                self.components.remove(comp)
                self.ctx.components.pop(comp.name, None)
        health.register("collection")
        health.watch_thread("kernel_watch", "kernel-watch", self.watcher.alive)
        health.watch_thread("kernel_watch", "psi-triggers", self.watcher.psi_waiter.alive)
        self.renderer.components = list(self.components)
        self.renderer.live_families = lambda: [
            health.metric_family(), *budget_families(self.watcher.fd_budget, self.watcher.short),
            *self.timing.families()]
        self.timing.start_lag_probe(loop)
        self._host = read_host_info(self.layout, self.ctx.host_facts)
        # Watches go on before the scan lists: a cgroup made meanwhile is listed or reported.
        self.watcher.start(loop)
        await loop.run_in_executor(None, self._rescan)
        await self._serve()
        loop.add_signal_handler(signal.SIGTERM, self._stopping.set)
        loop.add_signal_handler(signal.SIGINT, self._stopping.set)
        loop.add_signal_handler(signal.SIGHUP, self._reload)
        first = True
        while not self._stopping.is_set():
            started = time.monotonic()
            good = await self._cycle()
            if first and good:
                freeze_long_lived()
                self.notifier.ready()
                log.info("ready: %d workloads, first snapshot published",
                         len(self.snapshot.workloads) if self.snapshot else 0)
                first = False
            if good:  # a stuck or failing collection lets systemd's watchdog act
                self.notifier.watchdog()
            interval = float(self.config["interval"])
            timeout = max(0.0, interval - (time.monotonic() - started))
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await _first(self._stopping.wait(), self._wake.wait())
        log.info("stopping")
        self.notifier.stopping()
        await self._shutdown()
        return 0

    def _rescan(self, tree: bool = False) -> None:
        """The full discovery scan; `tree`: and the kernel watch's rescan after it."""
        try:
            self.collector.full_scan()
            if tree:
                self.watcher.rescan()
        except OSError as e:
            if e.errno not in OUT_OF_FDS:
                raise
            # Out of fds for a moment (too many clients, say): cycles go on with the cgroups
            # known and the kernel watch's notices; the next rescan tries again.
            log.warning("rescan failed: %s", e)
            self.ctx.health.fault("collection", "rescan", str(e))
        else:
            self.ctx.health.clear("collection", "rescan")
        self._last_rescan = time.monotonic()

    async def _cycle(self) -> bool:
        """One collection cycle; False when it failed (no snapshot published)."""
        loop = asyncio.get_running_loop()
        if time.monotonic() - self._last_rescan >= float(self.config["rescan_interval"]):
            # With the kernel watch's walk of the tree (a stat of every directory): off the loop.
            await loop.run_in_executor(None, self._rescan, True)
        assert self._host is not None
        host = self._host
        if self.watcher.short:  # said while some cgroup lacks its fds
            self.ctx.host_facts["kernel_watch"] = self.watcher.fd_budget.describe(1)
        else:
            self.ctx.host_facts.pop("kernel_watch", None)
        if dict(host.facts) != self.ctx.host_facts:
            host = self._host = read_host_info(self.layout, self.ctx.host_facts)

        self._added_during_cycle = []

        def work() -> Snapshot:
            snap = self.collector.cycle(self.ctx, host, self.components, _net_totals)
            self.renderer.prepare(snap)
            return snap

        def late(snap: Snapshot, added: list[WorkloadIdentity]) -> Snapshot:
            return self.collector.amend(snap, added, [])

        try:
            snap = await loop.run_in_executor(None, work)
        except Exception as e:
            log.exception("collection cycle failed")
            self.ctx.health.fault("collection", "cycle", repr(e))
            return False
        self.ctx.health.clear("collection", "cycle")
        # A cgroup created while the cycle ran was added to the previous snapshot: keep it.
        missing = [w for w in self._added_during_cycle if w.id not in snap.workloads]
        if missing:
            snap = await loop.run_in_executor(None, late, snap, missing)
        self.snapshot = snap
        self.notifier.status(f"{len(snap.workloads)} workloads, cycle {snap.seq}")
        for comp in self.components:
            try:
                await comp.on_snapshot(snap)
            except Exception as e:
                log.exception("component %s failed on snapshot %d", comp.name, snap.seq)
                self.ctx.health.fault(comp.name, "on_snapshot", repr(e))
            else:
                self.ctx.health.clear(comp.name, "on_snapshot")
        # After the components have digested the snapshot: render it for /metrics if someone
        # scrapes, collect reference cycles now and then, and hand freed memory back.
        await loop.run_in_executor(None, self._after_cycle, snap)
        return True

    def _after_cycle(self, snap: Snapshot) -> None:
        try:
            self.renderer.render_ahead(snap)
        except Exception:  # the next scrape renders it (and says why it fails)
            log.exception("rendering snapshot %d for /metrics failed", snap.seq)
        self._cycles_gc.maybe_collect()
        trim_malloc()

    def _on_tree_change(self, created: Sequence[str], deleted: Sequence[str],
                        overflow: bool) -> None:
        if overflow:
            self._wake.set()
            self._last_rescan = 0.0
        self._pending.add(created, deleted)
        if (created or deleted) and (self._applying is None or self._applying.done()):
            self._applying = asyncio.get_running_loop().create_task(self._apply_pending())

    async def _apply_pending(self) -> None:
        """Apply the pending tree changes, and those that arrive meanwhile, until none is left."""
        while self._pending:
            created, deleted = self._pending.take()

            def work(created: list[str] = created, deleted: list[str] = deleted
                     ) -> tuple[list[WorkloadIdentity], list[WorkloadIdentity],
                                Snapshot | None, Snapshot | None]:
                gone = self.collector.remove_paths(deleted)
                added = self.collector.add_paths(created)
                self._added_during_cycle.extend(added)
                # Amended in the same hop: each hop to a worker and back is two wake-ups.
                base = self.snapshot
                snap = self.collector.amend(base, added, gone) if base is not None else None
                return added, gone, base, snap

            loop = asyncio.get_running_loop()
            try:
                added, gone, base, snap = await loop.run_in_executor(None, work)
                # The snapshot published when the amendment is done, not the one before it: a
                # cycle may publish meanwhile, and amending the older one took the published
                # snapshot a cycle back (seen: /metrics rendering an old one again, 100+ ms).
                while snap is not None and self.snapshot is not base:
                    base = self.snapshot
                    snap = None if base is None else await loop.run_in_executor(
                        None, self.collector.amend, base, added, gone)
                if snap is not None:
                    self.snapshot = snap
            except Exception:  # the next rescan finds what these changes would have told
                log.exception("applying %d tree changes failed", len(created) + len(deleted))
                continue
            log.debug("tree change: +%d -%d cgroups", len(created), len(deleted))

    def _reload(self) -> None:
        path = self.config.source
        try:
            fresh = load_config(path, self.components, self.config.overrides)
        except ConfigError as e:
            log.error("reload refused, keeping the running configuration: %s", e)
            return
        changed = [k for k in ("interval", "log_level", "cadvisor")
                   if fresh[k] != self.config[k]]
        for k in ("listen", "socket", "state_dir"):
            if fresh[k] != self.config[k]:
                log.warning("reload: %s changes only at restart", k)
        self.config = AgentConfig(
            values=MappingProxyType({**fresh.values, **{k: self.config[k] for k in
                                                        ("listen", "socket", "state_dir")}}),
            source=fresh.source,
            overrides=self.config.overrides,
        )
        self.ctx.config = self.config.values
        logging.getLogger().setLevel(self.config["log_level"].upper())
        self.renderer.cadvisor = bool(self.config["cadvisor"])
        self.renderer.options = metrics_options(self.config.values)
        log.info("configuration reloaded (%s)", ", ".join(changed) or "no change")
        self._wake.set()

    # -- HTTP --------------------------------------------------------------------------
    async def _serve(self) -> None:
        api = ReadApi(lambda: self.snapshot, self.renderer, self.components, self.started,
                      lambda: float(self.config["interval"]), self.ctx.health)
        read_routes = api.routes()
        for comp in self.components:
            read_routes.extend(comp.routes())
        control_routes = [r for c in self.components for r in c.control_routes()]
        listen = str(self.config["listen"])
        if listen:
            host, _, port = listen.rpartition(":")
            tcp_app = web.Application(middlewares=[self.timing.middleware])
            tcp_app.add_routes(read_routes)
            runner = web.AppRunner(tcp_app, access_log=None, handle_signals=False)
            await runner.setup()
            await web.TCPSite(runner, host.strip("[]"), int(port)).start()
            self._runners.append(runner)
            log.info("listening on http://%s (read-only)", listen)
        sock = self.config.socket
        sock.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            sock.unlink()
        unix_app = web.Application(middlewares=[self.timing.middleware])
        unix_app.add_routes(read_routes + control_routes)
        runner = web.AppRunner(unix_app, access_log=None, handle_signals=False)
        await runner.setup()
        await web.UnixSite(runner, str(sock)).start()
        os.chmod(sock, int(self.config["socket_mode"]))
        self._runners.append(runner)
        log.info("listening on unix:%s (API and control)", sock)

    async def _shutdown(self) -> None:
        self.ctx.health.stopping = True
        self.timing.stop()
        for comp in reversed(self.components):
            try:
                # A sink that will not drain must not keep the agent from exiting.
                async with asyncio.timeout(STOP_TIMEOUT_S):
                    await comp.stop()
            except TimeoutError:
                log.warning("component %s did not stop within %d s", comp.name, STOP_TIMEOUT_S)
            except Exception:
                log.exception("component %s failed to stop", comp.name)
        for runner in self._runners:
            await runner.cleanup()
        with contextlib.suppress(OSError):
            self.config.socket.unlink()
        self.watcher.close()
        self.reader.close()
        self.store.close()


async def _first(*aws: Any) -> None:
    tasks = [asyncio.ensure_future(a) for a in aws]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for t in tasks:
            t.cancel()


class _NullNotifier:
    def ready(self) -> None: ...
    def status(self, text: str) -> None: ...
    def watchdog(self) -> None: ...
    def stopping(self) -> None: ...


def _notifier() -> Any:
    try:
        from agent.core.sdnotify import Notifier
    except ImportError:
        return _NullNotifier()
    return Notifier()


def build_arg_parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog="agentd", description="container-agent daemon")
    p.add_argument("--config", type=Path, default=None,
                   help=f"TOML configuration (default {DEFAULT_CONFIG_PATH} if it exists)")
    p.add_argument("--interval", type=float, default=None, help="seconds between cycles (1-60)")
    p.add_argument("--listen", default=None, help="HOST:PORT for HTTP, '' to disable TCP")
    p.add_argument("--socket", default=None, help="Unix socket path")
    p.add_argument("--state-dir", dest="state_dir", default=None, help="state directory")
    p.add_argument("--log-level", dest="log_level", default=None,
                   choices=["debug", "info", "warning", "error"])
    p.add_argument("--cadvisor", action="store_true", default=None,
                   help="also export cAdvisor metric names")
    p.add_argument("--check-config", action="store_true",
                   help="validate the configuration and exit")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_arg_parser().parse_args(argv)
    logging.basicConfig(stream=sys.stderr, level=logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")
    components = builtin_components()
    overrides = {k: getattr(args, k) for k in
                 ("interval", "listen", "socket", "state_dir", "log_level", "cadvisor")}
    path = args.config or (DEFAULT_CONFIG_PATH if DEFAULT_CONFIG_PATH.exists() else None)
    try:
        config = load_config(path, components, overrides, required=args.config is not None)
        layout = detect_layout()
    except (ConfigError, LayoutError) as e:
        print(f"agentd: {e}", file=sys.stderr)
        return int(ExitCode.USAGE)
    if args.check_config:
        print(f"agentd: configuration OK ({path or 'embedded defaults'})")
        return 0
    logging.getLogger().setLevel(config["log_level"].upper())
    raise_nofile_limit()
    limit_malloc_arenas()
    tune_gc()
    # The kernel watch's thread must get the GIL within a fraction of a millisecond of a
    # notification, not after the 5 ms default slice of a cycle or a scrape.
    sys.setswitchinterval(SWITCH_INTERVAL_S)
    try:
        agent = Agent(config, layout, components)
    except OSError as e:
        print(f"agentd: cannot open state in {config.state_dir}: {e.strerror}", file=sys.stderr)
        return int(ExitCode.FAILED)
    try:
        with asyncio.Runner(loop_factory=new_event_loop) as runner:
            return runner.run(agent.run())
    except OSError as e:
        print(f"agentd: {e}", file=sys.stderr)
        return int(ExitCode.FAILED)
