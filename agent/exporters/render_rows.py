"""Each workload's exposition lines, kept while its values stay the same objects.

At a 1 s cycle most workloads are idle, and an idle re-read hands on the last sample's values
object for object (`CgroupSample.same_values`): their lines are the ones rendered last time.
So a render keeps each workload's row (its lines per metric) and renders again only the
workloads whose identity or values changed, and the few metrics that depend on the read's time
(`Spec.volatile`, cAdvisor's `container_last_seen`). In the soak (1,050 workloads, a scrape
each second) a whole render cost ~104 ms of CPU per snapshot. Rows of workloads that are gone
are dropped at the next render: the cache holds what the last render exported, no more.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from agent.core.urgency import URGENT
from agent.model.snapshot import WorkloadIdentity, WorkloadState
from collectors.samples import CgroupSample

if TYPE_CHECKING:
    from agent.exporters.metrics import Spec

LabelsOf = Callable[[WorkloadState], list[str]]
#: Workloads rendered between two checks for urgent work (agent.core.urgency).
_GIVE_WAY_EVERY = 64


@dataclass(slots=True)
class _Row:
    identity: WorkloadIdentity
    sample: CgroupSample
    prefix: str
    #: Exposition lines per spec (b"" where the workload has no sample for it).
    lines: tuple[bytes, ...]


def escape(value: str) -> str:
    return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")


def number(value: float) -> str:
    if isinstance(value, int):
        return str(value)
    if value != value:
        return "NaN"
    return repr(float(value))


def spec_lines(spec: Spec, w: WorkloadState, prefix: str) -> bytes:
    """One workload's lines of one metric."""
    lines: list[str] = []
    for extra, value in spec.values(w):
        if extra:
            extra_text = ",".join(
                f'{k}="{escape(v)}"' for k, v in zip(spec.extra, extra, strict=True))
            lines.append(f"{spec.name}{{{prefix},{extra_text}}} {number(value)}\n")
        else:
            lines.append(f"{spec.name}{{{prefix}}} {number(value)}\n")
    return "".join(lines).encode() if lines else b""


class RowCache:
    """The rows of one spec table (one per call site of render_specs: the tables differ)."""

    def __init__(self) -> None:
        self._key: tuple[object, ...] | None = None
        self._rows: dict[str, _Row] = {}
        #: Rows rendered anew and rows reused, over the cache's life (tests read them).
        self.rendered = 0
        self.reused = 0

    def __len__(self) -> int:
        return len(self._rows)

    def rows(
        self, workloads: Sequence[WorkloadState], specs: Sequence[Spec], names: Sequence[str],
        labels_of: LabelsOf,
    ) -> list[tuple[bytes, ...]]:
        """Each workload's lines per spec, in the order of `workloads`."""
        key = (tuple(specs), tuple(names), labels_of)
        if key != self._key:  # another table (options changed at a reload): start afresh
            self._key, self._rows = key, {}
        volatile = [i for i, s in enumerate(specs) if s.volatile]
        old, new = self._rows, {}
        out: list[tuple[bytes, ...]] = []
        for n, w in enumerate(workloads):
            if n % _GIVE_WAY_EVERY == 0:
                URGENT.give_way()
            wid = w.identity.id
            row = old.get(wid)
            if row is not None and row.sample.same_values(w.sample) and (
                    row.identity is w.identity or row.identity == w.identity):
                if volatile:
                    lines = list(row.lines)
                    for i in volatile:
                        lines[i] = spec_lines(specs[i], w, row.prefix)
                    row.lines = tuple(lines)
                row.identity, row.sample = w.identity, w.sample
                self.reused += 1
            else:
                prefix = ",".join(f'{k}="{escape(v)}"'
                                  for k, v in zip(names, labels_of(w), strict=True))
                row = _Row(w.identity, w.sample, prefix,
                           tuple(spec_lines(spec, w, prefix) for spec in specs))
                self.rendered += 1
            new[wid] = row
            out.append(row.lines)
        self._rows = new
        return out
