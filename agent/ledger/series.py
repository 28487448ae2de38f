"""The last values of one ledger counter series, as persisted with its incarnation."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from agent.ledger.storage import dump_json
from agent.model.snapshot import WorkloadIdentity
from collectors.samples import CgroupSample


@dataclass(slots=True)
class Series:
    """Last values of one counter series (an incarnation, or a network namespace)."""

    last_wall: int | None = None
    last_mono: int | None = None
    counters: dict[str, int] = field(default_factory=dict)
    #: Incarnation only: memory integral state and high-water marks.
    mem_last: int | None = None
    mem_cum_bns: int = 0
    mem_billed: int = 0
    mem_peak: int | None = None
    pids_peak: int | None = None
    n_samples: int = 0
    n_resets: int = 0
    baseline: bool = False
    inner: bool = False
    # In memory only (not persisted): the idle stretch not applied yet, and what tells an
    # idle sample (the last pids gauge, the identity whose record is cached).
    idle: int = 0
    idle_wall: int = 0
    idle_mono: int = 0
    pids_last: int | None = None
    #: Loaded from the store (an agent restart, or evicted after its final sample): some of
    #: its open rows may be only there, so a row not in memory is read back before adding.
    stored: bool = False
    ident: WorkloadIdentity | None = None
    ident_json: str = ""
    #: The last sample found idle: a sample sharing its values (an idle re-read's) is too.
    seen: CgroupSample | None = None

    def to_json(self) -> str:
        return dump_json({
            "last_wall": self.last_wall, "last_mono": self.last_mono,
            "counters": self.counters, "mem_last": self.mem_last,
            "mem_cum_bns": self.mem_cum_bns, "mem_billed": self.mem_billed,
            "mem_peak": self.mem_peak, "pids_peak": self.pids_peak,
            "n_samples": self.n_samples, "n_resets": self.n_resets,
            "baseline": self.baseline, "inner": self.inner,
        })

    @classmethod
    def from_json(cls, text: str) -> Series:
        d = json.loads(text)
        return cls(
            last_wall=d["last_wall"], last_mono=d["last_mono"],
            counters={str(k): int(v) for k, v in d["counters"].items()},
            mem_last=d["mem_last"], mem_cum_bns=int(d["mem_cum_bns"]),
            mem_billed=int(d["mem_billed"]), mem_peak=d["mem_peak"], pids_peak=d["pids_peak"],
            n_samples=int(d["n_samples"]), n_resets=int(d["n_resets"]),
            baseline=bool(d["baseline"]), inner=bool(d["inner"]),
        )
