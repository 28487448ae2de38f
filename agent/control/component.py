"""The control capability in the daemon: routes on the Unix socket only, work in threads.

POST /api/v1/control/{freeze|thaw|kill|checkpoint|restore} answers NDJSON: zero or more
`{"progress": "...", "t": seconds}` lines, then one final line, either
`{"result": {...}, "exit_code": 0}` or `{"error": "<one line>", "exit_code": N, "details": {}}`.
Bad requests (unknown target, bad argument) are answered before the stream starts, as plain
JSON errors. GET /api/v1/control/state?target=X gives both freezers' view; GET
/api/v1/checkpoints lists checkpoints; DELETE /api/v1/checkpoints/{id} removes one.
Every operation that started is an event (frozen, thawed, killed, checkpointed, restored)
with its duration and outcome.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any

from aiohttp import web

from agent.api.errors import json_error
from agent.control import criu, operations, owners
from agent.control.checkpoints import CheckpointStore
from agent.control.errors import ControlError
from agent.control.freeze_v2 import Progress
from agent.control.operations import FREEZERS, Policy
from agent.control.protect import DEFAULT_PROTECTED, check_allowed, check_patterns
from agent.control.systemd_dbus import systemd_manages
from agent.control.targets import Target, resolve_target
from agent.core.component import AgentContext, Component, Setting
from agent.core.exit_codes import ExitCode
from agent.model.snapshot import WorkloadIdentity

log = logging.getLogger(__name__)

EVENT_OF = MappingProxyType({"freeze": "frozen", "thaw": "thawed", "kill": "killed",
                             "checkpoint": "checkpointed", "restore": "restored"})
OUTCOME_OF = MappingProxyType({ExitCode.TIMED_OUT: "timed_out", ExitCode.REFUSED: "refused"})
MAX_TIMEOUT_S = 300.0

Work = Callable[[Progress], dict[str, object]]
#: (busy key, workload or None, event fields, the blocking work).
Plan = tuple[str, WorkloadIdentity | None, dict[str, object], Work]


def _timeout_ok(v: Any) -> str | None:
    return None if 0 < v <= MAX_TIMEOUT_S else f"must be > 0 and <= {MAX_TIMEOUT_S:g} seconds"


def _freezer_ok(v: Any) -> str | None:
    return None if v in FREEZERS else f"must be one of {', '.join(FREEZERS)}"


def _bool(body: Mapping[str, Any], key: str) -> bool:
    v = body.get(key, False)
    if not isinstance(v, bool):
        raise ControlError(f"{key} must be true or false", ExitCode.USAGE)
    return v


def _str(body: Mapping[str, Any], key: str, required: bool = False) -> str | None:
    v = body.get(key)
    if v is None:
        if required:
            raise ControlError(f"missing {key!r}", ExitCode.USAGE)
        return None
    if not isinstance(v, str) or not v or "\x00" in v:
        raise ControlError(f"{key} must be a non-empty string", ExitCode.USAGE)
    return v


def _timeout(body: Mapping[str, Any]) -> float | None:
    v = body.get("timeout")
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, (int, float)) or _timeout_ok(v):
        raise ControlError(f"timeout must be a number of seconds in (0, {MAX_TIMEOUT_S:g}]",
                           ExitCode.USAGE)
    return float(v)


class ControlComponent(Component):
    name = "control"
    settings: Mapping[str, Setting] = MappingProxyType({
        "criu_path": Setting(str, "", "CRIU binary; empty: the system criu when `criu check` "
                             "passes, else /opt/container-agent/criu/criu"),
        "freeze_timeout": Setting((int, float), 10, "seconds a freeze may take before it is "
                                  "rolled back", _timeout_ok),
        "freezer": Setting(str, "auto", "auto, v1 or v2 (auto: v1 on hybrid hosts when it "
                           "holds exactly the target, else cgroup2)", _freezer_ok),
        "protected": Setting(list, list(DEFAULT_PROTECTED), "unit-name patterns never frozen, "
                             "killed or checkpointed without --force", check_patterns),
        "network_lock": Setting(str, "nftables", "CRIU --network-lock for --tcp-established "
                                "(nftables, iptables, or empty for CRIU's default)"),
    })

    def __init__(self) -> None:
        self.ctx: AgentContext | None = None
        self.policy = Policy()
        self.criu = criu.CriuInfo(None, None, False, "not probed yet")
        self.store: CheckpointStore | None = None
        self.network_lock = "nftables"
        self._busy: set[str] = set()
        self._busy_lock = threading.Lock()

    async def start(self, ctx: AgentContext) -> None:
        self.ctx = ctx
        conf = ctx.section(self.name)
        self.policy = Policy(
            protected=tuple(conf.get("protected", DEFAULT_PROTECTED)),
            freezer=str(conf.get("freezer", "auto")),
            timeout_s=float(conf.get("freeze_timeout", 10)),
        )
        self.network_lock = str(conf.get("network_lock", "nftables"))
        self.store = CheckpointStore(ctx.state_dir)
        self.criu = await asyncio.to_thread(criu.find_criu, str(conf.get("criu_path", "")))
        ctx.host_facts["criu"] = self.criu.as_fact()
        if self.criu.ok:
            log.info("criu %s at %s: checkpoint/restore available", self.criu.version,
                     self.criu.path)
        else:
            log.warning("checkpoint/restore unavailable: %s", self.criu.error)

    def control_routes(self) -> list[web.RouteDef]:
        return [
            web.post("/api/v1/control/{op}", self._op),
            web.get("/api/v1/control/state", self._state),
            web.get("/api/v1/checkpoints", self._list),
            web.delete("/api/v1/checkpoints/{id}", self._remove),
        ]

    # -- helpers ---------------------------------------------------------------------------
    def _ctx(self) -> AgentContext:
        if self.ctx is None:
            raise ControlError("control component not started", ExitCode.UNAVAILABLE)
        return self.ctx

    def _store(self) -> CheckpointStore:
        if self.store is None:
            raise ControlError("control component not started", ExitCode.UNAVAILABLE)
        return self.store

    def _resolve(self, ref: str) -> Target:
        ctx = self._ctx()
        return resolve_target(ref, ctx.layout, ctx.latest())

    def _plan(self, op: str, body: Mapping[str, Any]) -> Plan:
        """Validate and resolve (blocking: runs in a thread); returns the work to stream."""
        ctx = self._ctx()
        layout, policy = ctx.layout, self.policy
        timeout = _timeout(body)
        if op == "restore":
            cid = _str(body, "checkpoint", required=True)
            assert cid is not None
            cgroup = _str(body, "cgroup")
            self._store().path(cid)  # 404 before the stream starts
            fields: dict[str, object] = {"checkpoint": cid, "cgroup": cgroup}
            return (f"restore:{cid}", None, fields, lambda p: criu.restore(
                self.criu, self._store(), cid, layout, cgroup=cgroup, progress=p))
        ref = _str(body, "target", required=True)
        assert ref is not None
        force = _bool(body, "force")
        freezer = _str(body, "freezer")
        if freezer is not None and freezer not in FREEZERS:
            raise ControlError(f"freezer must be one of {', '.join(FREEZERS)}", ExitCode.USAGE)
        leave, tcp = _bool(body, "leave_running"), _bool(body, "tcp_established")
        export_s = _str(body, "export")
        export = Path(export_s) if export_s else None
        if export is not None and not export.is_absolute():
            raise ControlError("export must be an absolute path", ExitCode.USAGE)
        # Arguments are checked before the target is resolved: a bad call is a usage error.
        target = self._resolve(ref)
        fields = {"target": ref, "cgroup": target.cgroup, "force": force}
        work: Work
        route = self._route(target, _bool(body, "via_cgroup") or freezer is not None)
        if op in ("freeze", "thaw", "kill") and route.via != owners.CGROUP:
            if not force:
                check_allowed(target, target.dirs(), policy.protected,
                              agent_pid=policy.agent_pid, verb=op)
            return target.cgroup, target.identity, fields, self._owner_work(
                op, target, route, timeout)
        if route.note:
            fields["owner_skipped"] = route.note
        if op == "freeze":
            def work(p: Progress) -> dict[str, object]:
                return operations.freeze(target, layout, policy, force=force, freezer=freezer,
                                         timeout=timeout, progress=p)
        elif op == "thaw":
            def work(p: Progress) -> dict[str, object]:
                return operations.thaw(target, layout, policy, timeout=timeout, progress=p)
        elif op == "kill":
            def work(p: Progress) -> dict[str, object]:
                return operations.kill(target, policy, force=force, timeout=timeout, progress=p)
        else:
            fields.update(leave_running=leave, tcp_established=tcp)

            def work(p: Progress) -> dict[str, object]:
                return criu.checkpoint(
                    self.criu, target, layout, policy, self._store(), leave_running=leave,
                    tcp_established=tcp, export=export, force=force, freezer=freezer,
                    network_lock=self.network_lock, progress=p)
        return target.cgroup, target.identity, fields, work

    def _route(self, target: Target, force_cgroup: bool) -> owners.Route:
        ident = self._ctx().components.get("identity")
        client_of = getattr(ident, "client", lambda runtime: None)
        return owners.choose_route(
            target, force_cgroup=force_cgroup, client_of=client_of,
            lxc_paths=tuple(getattr(ident, "lxc_paths", ())),
            systemd_ok=systemd_manages)

    def _owner_work(self, op: str, target: Target, route: owners.Route,
                    timeout: float | None) -> Work:
        ctx, policy = self._ctx(), self.policy
        loop = ctx.loop
        assert loop is not None
        t = policy.timeout_s if timeout is None else timeout
        if op == "freeze":
            return lambda p: owners.freeze(target, ctx.layout, route, t, loop, p)
        if op == "thaw":
            return lambda p: owners.thaw(target, ctx.layout, route, t, loop, policy, p)
        return lambda p: owners.kill(target, route, t, loop, p)

    def _emit(self, op: str, who: WorkloadIdentity | None, outcome: str,
              fields: dict[str, object]) -> None:
        ctx = self._ctx()
        severity = "info" if outcome == "ok" and op != "kill" else "warning"
        try:
            ctx.emit(EVENT_OF[op], who, severity, {**fields, "outcome": outcome})
        except Exception:  # an event sink must never break a control operation
            log.exception("cannot emit %s event", EVENT_OF[op])

    # -- handlers --------------------------------------------------------------------------
    async def _op(self, request: web.Request) -> web.StreamResponse:
        op = request.match_info["op"]
        if op not in EVENT_OF:
            return json_error(f"unknown control operation {op!r}", ExitCode.USAGE, 404)
        try:
            body = await request.json()
        except (ValueError, UnicodeDecodeError):
            return json_error("request body must be a JSON object", ExitCode.USAGE)
        if not isinstance(body, dict):
            return json_error("request body must be a JSON object", ExitCode.USAGE)
        try:
            key, who, fields, work = await asyncio.to_thread(self._plan, op, body)
        except ControlError as e:
            return json_error(e.message, e.exit_code)
        with self._busy_lock:
            if key in self._busy:
                return json_error(f"another operation on {key} is running", ExitCode.FAILED,
                                  409)
            self._busy.add(key)
        try:
            return await self._stream(request, op, who, fields, work)
        finally:
            with self._busy_lock:
                self._busy.discard(key)

    async def _stream(
        self, request: web.Request, op: str, who: WorkloadIdentity | None,
        fields: dict[str, object], work: Work,
    ) -> web.StreamResponse:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[dict[str, object] | None] = asyncio.Queue()
        start = time.monotonic()

        def progress(msg: str) -> None:
            item: dict[str, object] = {"progress": msg, "t": round(time.monotonic() - start, 3)}
            loop.call_soon_threadsafe(queue.put_nowait, item)

        def run() -> tuple[dict[str, object] | None, ControlError | None]:
            try:
                return work(progress), None
            except ControlError as e:
                return None, e
            except OSError as e:  # e.g. the cgroup was removed under us (ENOENT, ENODEV)
                where = f"{e.filename}: " if e.filename else ""
                return None, ControlError(f"{where}{e.strerror or e}")
            except Exception as e:  # report, never leave the client hanging
                log.exception("control %s failed", op)
                return None, ControlError(f"internal error: {type(e).__name__}: {e}")
            finally:
                loop.call_soon_threadsafe(queue.put_nowait, None)

        resp = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
        await resp.prepare(request)
        fut = loop.run_in_executor(None, run)
        connected = True
        while (item := await queue.get()) is not None:
            connected = connected and await _write(resp, item)
        result, error = await fut
        duration = round(time.monotonic() - start, 6)
        final: dict[str, object]
        if error is None:
            assert result is not None
            final = {"result": result, "exit_code": 0}
            keys = ("freezer", "method", "id", "pids", "root_pid", "via")
            extra: dict[str, object] = {k: result[k] for k in keys if k in result}
            self._emit(op, who, "ok", {**fields, **extra, "duration_s": duration})
        else:
            final = {"error": error.message, "exit_code": int(error.exit_code),
                     "details": error.details}
            outcome = OUTCOME_OF.get(ExitCode(error.exit_code), "failed")
            self._emit(op, who, outcome, {**fields, "duration_s": duration,
                                          "error": error.message})
        if connected and await _write(resp, final):
            await resp.write_eof()
        return resp

    async def _state(self, request: web.Request) -> web.Response:
        ref = request.query.get("target", "")
        try:
            target = await asyncio.to_thread(self._resolve, ref)
            state = await asyncio.to_thread(operations.freeze_state, target,
                                            self._ctx().layout)
        except ControlError as e:
            return json_error(e.message, e.exit_code)
        return web.json_response(state)

    async def _list(self, request: web.Request) -> web.Response:
        try:
            items = await asyncio.to_thread(self._store().list)
        except ControlError as e:
            return json_error(e.message, e.exit_code)
        return web.json_response({"checkpoints": items, "criu": self.criu.as_fact()})

    async def _remove(self, request: web.Request) -> web.Response:
        cid = request.match_info["id"]
        try:
            await asyncio.to_thread(self._store().remove, cid)
        except ControlError as e:
            return json_error(e.message, e.exit_code)
        return web.json_response({"removed": cid})


async def _write(resp: web.StreamResponse, item: Mapping[str, object]) -> bool:
    """One NDJSON line; False once the client has gone (the operation still completes)."""
    try:
        await resp.write((json.dumps(item, default=str) + "\n").encode())
    except (ConnectionError, RuntimeError):
        return False
    return True
