"""inotify lives in collectors (the cgroup reader watches its kept directories too); this name
stays for the tree watch."""

from collectors.inotify import (
    IN_ATTRIB,
    IN_CLOEXEC,
    IN_CREATE,
    IN_DELETE,
    IN_DELETE_SELF,
    IN_IGNORED,
    IN_ISDIR,
    IN_MODIFY,
    IN_MOVED_FROM,
    IN_MOVED_TO,
    IN_NONBLOCK,
    IN_ONLYDIR,
    IN_Q_OVERFLOW,
    Inotify,
    InotifyEvent,
)

__all__ = [
    "IN_ATTRIB", "IN_CLOEXEC", "IN_CREATE", "IN_DELETE", "IN_DELETE_SELF", "IN_IGNORED",
    "IN_ISDIR", "IN_MODIFY", "IN_MOVED_FROM", "IN_MOVED_TO", "IN_NONBLOCK", "IN_ONLYDIR",
    "IN_Q_OVERFLOW", "Inotify", "InotifyEvent",
]
