"""Which kept cgroup directories were written to (inotify IN_MODIFY): their limits are read
only then (a limit changes only by a write to its file)."""

from __future__ import annotations

from collectors.inotify import IN_IGNORED, IN_MODIFY, IN_ONLYDIR, IN_Q_OVERFLOW, Inotify


class WrittenDirs:
    """Watches the kept directories under `roots`; a directory not watched (other roots, no
    inotify, out of watches) always counts as written."""

    def __init__(self, roots: tuple[str, ...]) -> None:
        self._roots = roots
        self._notify: Inotify | None = None
        self._wd_of: dict[str, int] = {}
        self._path_of: dict[int, str] = {}
        self._written: set[str] = set()

    def watch(self, dir_path: str) -> None:
        """A directory is now kept: watch it for writes if its limits are read only then."""
        if not dir_path.startswith(self._roots):
            return
        try:
            if self._notify is None:
                self._notify = Inotify()
            wd = self._notify.add_watch(dir_path, IN_MODIFY | IN_ONLYDIR)
        except OSError:  # no inotify, or out of watches: the directory counts as written
            return
        self._wd_of[dir_path] = wd
        self._path_of[wd] = dir_path
        self._written.add(dir_path)  # its first read as a kept directory reads the limits

    def unwatch(self, dir_path: str) -> None:
        wd = self._wd_of.pop(dir_path, None)
        if wd is not None:
            self._path_of.pop(wd, None)
            self._written.discard(dir_path)
            if self._notify is not None:
                self._notify.rm_watch(wd)

    def drain(self) -> None:
        """Note the directories written to since the last read (one read syscall)."""
        if self._notify is None or not self._notify.pending():
            return
        for ev in self._notify.read_events():
            if ev.mask & IN_Q_OVERFLOW:
                self._written.update(self._wd_of)
                continue
            dir_path = self._path_of.get(ev.wd)
            if dir_path is None:
                continue
            if ev.mask & IN_IGNORED:  # removed: the kernel dropped the watch
                del self._path_of[ev.wd]
                self._wd_of.pop(dir_path, None)
            self._written.add(dir_path)

    def stale(self, dir_path: str) -> bool:
        """The directory's limits must be read: written to since its last read, or not
        watched."""
        return dir_path in self._written or dir_path not in self._wd_of

    def any_written(self) -> bool:
        """Some watched directory was written to (or lost its watch) since it was read."""
        return bool(self._written)

    def limits_stale(self, dir_path: str) -> bool:
        """stale() for a directory whose limits are read only when written (under `roots`);
        False for the others (they hold no limits to read)."""
        return dir_path.startswith(self._roots) and self.stale(dir_path)

    def read(self, dir_path: str) -> None:
        """The directory was read whole (its limits are current)."""
        self._written.discard(dir_path)

    def close(self) -> None:
        if self._notify is not None:
            self._notify.close()
            self._notify = None
