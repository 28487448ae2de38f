"""What a runtime itself says about its containers, and the cache the collection cycle reads.

The cache is filled outside the cycle (runtime APIs, event streams, metadata on disk) and read
by the cycle with a dict lookup: a slow or absent runtime never delays a cycle. The dict is
replaced, never mutated, so a reader in the collection thread needs no lock.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType

from agent.model.snapshot import EMPTY_LABELS, WorkloadIdentity, WorkloadKind

_HEX64 = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True, slots=True)
class RuntimeInfo:
    """One container as its runtime knows it."""

    runtime: str
    #: The runtime's full container id.
    id: str
    name: str
    image: str | None = None
    image_id: str | None = None
    labels: Mapping[str, str] = field(default_factory=lambda: EMPTY_LABELS)
    pod: str | None = None
    namespace: str | None = None
    restart_count: int | None = None


class IdentityCache:
    """Container id -> RuntimeInfo; entries outlive an API outage (cached names are kept)."""

    def __init__(self) -> None:
        self._by_id: Mapping[str, RuntimeInfo] = MappingProxyType({})
        #: cgroup -> (discovered identity, runtime record, enriched identity): a cycle asks
        #: again for the same objects, so the enriched one is built once, not per cycle.
        self._memo: dict[str, tuple[WorkloadIdentity, RuntimeInfo, WorkloadIdentity]] = {}

    def __len__(self) -> int:
        return len(self._by_id)

    def get(self, cid: str) -> RuntimeInfo | None:
        return self._by_id.get(cid)

    def count(self, runtime: str) -> int:
        return sum(1 for i in self._by_id.values() if i.runtime == runtime)

    def put(self, info: RuntimeInfo) -> None:
        self._set({**self._by_id, info.id: info})

    def drop(self, cid: str) -> None:
        if cid in self._by_id:
            self._set({k: v for k, v in self._by_id.items() if k != cid})

    def replace_runtime(self, runtime: str, infos: Iterable[RuntimeInfo]) -> None:
        """A full listing of `runtime`: its entries become exactly `infos`."""
        kept = {k: v for k, v in self._by_id.items() if v.runtime != runtime}
        kept.update((i.id, i) for i in infos)
        self._set(kept)

    def _set(self, by_id: dict[str, RuntimeInfo]) -> None:
        self._by_id = MappingProxyType(by_id)
        # Memo entries of records that changed or went: nothing kept for what is not live.
        for path, (_, info, _) in list(self._memo.items()):
            if by_id.get(info.id) is not info:
                self._memo.pop(path, None)

    def retain(self, cgroups: set[str]) -> None:
        """Only these cgroups are live: drop what was built for the others."""
        for path in [p for p in self._memo if p not in cgroups]:
            self._memo.pop(path, None)

    def lookup(self, ident: WorkloadIdentity) -> RuntimeInfo | None:
        """The runtime's record of this workload: by id, or by a cgroup named by a known id
        (a docker `--cgroup-parent` the path rules do not know)."""
        by_id = self._by_id
        hit = by_id.get(ident.id)
        if hit is not None:
            return hit
        last = ident.cgroup.rsplit("/", 1)[-1]
        return by_id.get(last) if _HEX64.fullmatch(last) else None

    def enrich(self, ident: WorkloadIdentity) -> WorkloadIdentity:
        """`ident` with the runtime's name, image, labels, pod and namespace, when known."""
        info = self.lookup(ident)
        if info is None:
            return ident
        memo = self._memo.get(ident.cgroup)
        if memo is not None and memo[0] is ident and memo[1] is info:
            return memo[2]
        labels = dict(ident.labels)
        labels.update(info.labels)
        if info.image_id:
            labels["image_id"] = info.image_id
        if info.restart_count is not None:
            labels["restart_count"] = str(info.restart_count)
        enriched = replace(
            ident,
            id=info.id,
            kind=WorkloadKind.CONTAINER,
            runtime=info.runtime,
            name=info.name or ident.name,
            image=info.image or ident.image,
            pod_name=info.pod or ident.pod_name,
            namespace=info.namespace or ident.namespace,
            labels=MappingProxyType(labels),
        )
        self._memo[ident.cgroup] = (ident, info, enriched)
        return enriched
