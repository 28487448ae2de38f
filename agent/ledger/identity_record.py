"""The identity columns an incarnation is stored and exported with, always valid UTF-8."""

from __future__ import annotations

from typing import Any

from agent.model.snapshot import WorkloadIdentity


def text(value: str) -> str:
    """A string that always encodes as UTF-8: undecodable bytes in a cgroup name (which
    SQLite and the exports cannot take) become \\xNN text; one hostile name must not stop
    the accounting of every other cgroup."""
    try:
        value.encode("utf-8")
        return value
    except UnicodeEncodeError:
        return value.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def _opt(value: str | None) -> str | None:
    return None if value is None else text(value)


def identity_record(ident: WorkloadIdentity) -> dict[str, Any]:
    """The identity columns an export carries, as stored with each incarnation."""
    return {
        "id": text(ident.id), "kind": str(ident.kind), "runtime": text(ident.runtime),
        "name": text(ident.name), "cgroup": text(ident.cgroup), "pod_name": _opt(ident.pod_name),
        "pod_uid": _opt(ident.pod_uid), "namespace": _opt(ident.namespace),
        "labels": {text(k): text(v) for k, v in sorted(ident.labels.items())},
        "netns": ident.namespaces.get("net"),
    }
