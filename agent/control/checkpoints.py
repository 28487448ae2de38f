"""Checkpoint directories under <state_dir>/checkpoints/<id>/: images, logs, metadata.json.

Layout of one checkpoint:
  images/         CRIU's image files (*.img)
  metadata.json   target, cgroups per hierarchy, processes, time, CRIU version, options
  dump.log        CRIU's dump log; restore.log after a restore
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
import tarfile
import time
from pathlib import Path
from typing import Any

from agent.control.errors import ControlError
from agent.core.exit_codes import ExitCode

_ID = re.compile(r"^[0-9A-Za-z][0-9A-Za-z._-]{0,99}$")


def dir_bytes(d: Path) -> int:
    total = 0
    for sub, _dirs, files in os.walk(d):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(sub, name)).st_size
    return total


class CheckpointStore:
    def __init__(self, state_dir: Path) -> None:
        self.root = state_dir / "checkpoints"

    def create(self) -> tuple[str, Path]:
        """A new, empty checkpoint directory and its id (UTC time + random suffix)."""
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        cid = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + "-" + secrets.token_hex(3)
        d = self.root / cid
        d.mkdir(mode=0o700)
        (d / "images").mkdir()
        return cid, d

    def path(self, cid: str) -> Path:
        if not _ID.match(cid) or cid in (".", ".."):
            raise ControlError(f"bad checkpoint id {cid!r}", ExitCode.USAGE)
        d = self.root / cid
        if not (d / "metadata.json").is_file():
            raise ControlError(f"no checkpoint {cid!r}", ExitCode.NOT_FOUND)
        return d

    def load(self, cid: str) -> dict[str, Any]:
        try:
            data = json.loads((self.path(cid) / "metadata.json").read_text())
        except (OSError, ValueError) as e:
            raise ControlError(f"checkpoint {cid}: unreadable metadata ({e})") from None
        if not isinstance(data, dict):
            raise ControlError(f"checkpoint {cid}: metadata is not an object")
        return data

    def save(self, d: Path, meta: dict[str, Any]) -> None:
        tmp = d / "metadata.json.tmp"
        tmp.write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
        os.replace(tmp, d / "metadata.json")

    def list(self) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        if not self.root.is_dir():
            return out
        for d in sorted(self.root.iterdir()):
            if not (d / "metadata.json").is_file():
                continue
            try:
                meta = json.loads((d / "metadata.json").read_text())
            except (OSError, ValueError):
                continue
            out.append(
                {
                    "id": d.name,
                    "time": meta.get("time"),
                    "target": meta.get("target"),
                    "cgroup": meta.get("cgroup"),
                    "root_pid": meta.get("root_pid"),
                    "processes": len(meta.get("processes", [])),
                    "bytes": meta.get("images_bytes"),
                    "criu_version": (meta.get("criu") or {}).get("version"),
                    "options": meta.get("options", {}),
                    "restores": len(meta.get("restores", [])),
                }
            )
        return out

    def remove(self, cid: str) -> None:
        d = self.path(cid)
        shutil.rmtree(d)

    def discard(self, d: Path) -> None:
        """Drop a checkpoint directory that never completed."""
        if d.parent == self.root:
            shutil.rmtree(d, ignore_errors=True)


def export_tar(d: Path, dest: Path) -> int:
    """Write the checkpoint directory as an uncompressed tar at `dest` (never overwrites)."""
    if not dest.is_absolute():
        raise ControlError(f"export path must be absolute: {dest}", ExitCode.USAGE)
    if not dest.parent.is_dir():
        raise ControlError(f"export directory does not exist: {dest.parent}", ExitCode.USAGE)
    try:
        with tarfile.open(dest, "x") as tar:
            tar.add(d, arcname=d.name)
    except FileExistsError:
        raise ControlError(f"{dest} exists: not overwritten", ExitCode.USAGE) from None
    except OSError as e:
        raise ControlError(f"cannot write {dest}: {e.strerror}") from None
    return dest.stat().st_size
