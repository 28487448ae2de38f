"""podman's containers from containers/storage's metadata on disk, for when no API service runs.

podman has no daemon: its API socket exists only while `podman system service` runs. The
storage library keeps every container's names, image id and image name in
`<root>/<driver>-containers/containers.json` (`overlay-containers` with the default driver),
readable without podman. Labels and the pod are only in libpod's own database, so this source
gives name and image; the API gives the rest when it runs. A file that is missing, half-written
or garbage gives nothing, never an exception.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from agent.identity.runtime_info import RuntimeInfo

#: A containers.json larger than this is not one.
_MAX_BYTES = 64 << 20


def storage_files(root: Path) -> list[Path]:
    """Every driver's containers.json under a storage root (`overlay-containers`, `vfs-...`)."""
    try:
        with os.scandir(root) as it:
            dirs = sorted(e.name for e in it if e.name.endswith("-containers") and e.is_dir())
    except OSError:
        return []
    return [root / d / "containers.json" for d in dirs if (root / d / "containers.json").is_file()]


def parse_containers_json(doc: object) -> list[RuntimeInfo]:
    out: list[RuntimeInfo] = []
    for entry in doc if isinstance(doc, list) else []:
        if not isinstance(entry, dict) or not isinstance(entry.get("id"), str):
            continue
        meta: object = {}
        if isinstance(entry.get("metadata"), str):
            try:
                meta = json.loads(entry["metadata"])
            except ValueError:
                meta = {}
        meta = meta if isinstance(meta, dict) else {}
        names = entry.get("names")
        name = meta.get("name") if isinstance(meta.get("name"), str) else None
        if not name and isinstance(names, list) and names and isinstance(names[0], str):
            name = names[0]
        image = meta.get("image-name")
        image_id = entry.get("image")
        out.append(RuntimeInfo(
            runtime="podman",
            id=entry["id"],
            name=name or entry["id"][:12],
            image=image if isinstance(image, str) and image else None,
            image_id=image_id if isinstance(image_id, str) and image_id else None,
        ))
    return out


class PodmanStorage:
    """Reads a storage root's containers.json files again only when one changed."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._keys: dict[Path, tuple[int, int, int]] = {}
        self._infos: dict[Path, list[RuntimeInfo]] = {}

    def read(self) -> list[RuntimeInfo] | None:
        """Every container the storage knows; None when nothing changed since the last read."""
        files = storage_files(self.root)
        changed = set(self._keys) != set(files)
        for f in files:
            try:
                st = os.stat(f)
            except OSError:
                continue
            key = (st.st_ino, st.st_mtime_ns, st.st_size)
            if self._keys.get(f) == key:
                continue
            changed = True
            self._keys[f] = key
            try:
                with open(f, "rb") as fh:
                    data = fh.read(_MAX_BYTES + 1)
                doc = json.loads(data) if len(data) <= _MAX_BYTES else None
            except (OSError, ValueError):
                doc = None
            self._infos[f] = parse_containers_json(doc)
        for gone in set(self._keys) - set(files):
            del self._keys[gone]
            self._infos.pop(gone, None)
        if not changed:
            return None
        return [i for f in files for i in self._infos.get(f, [])]
