"""sd_notify(3) over the datagram socket named in NOTIFY_SOCKET, with no extra dependency.

Without NOTIFY_SOCKET (not started by systemd with Type=notify) every call is a no-op, so the
daemon calls it unconditionally. A leading '@' names a Linux abstract socket.
"""

from __future__ import annotations

import os
import socket
import threading


def _address(value: str) -> str | bytes | None:
    if not value:
        return None
    if value.startswith("@"):
        return b"\0" + value[1:].encode()  # abstract namespace
    if value.startswith("/"):
        return value
    return None  # vsock and other forms are not used by systemd for services


def _format(fields: dict[str, object]) -> bytes:
    lines = []
    for key, value in fields.items():
        text = str(int(value)) if isinstance(value, bool) else str(value)
        # A newline inside a value would start a new assignment: flatten it.
        lines.append(f"{key}={text.replace(chr(10), ' ')}")
    return ("\n".join(lines) + "\n").encode()


class Notifier:
    """Sends state changes to the service manager; silent when not under systemd."""

    def __init__(self, environ: dict[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        self._address = _address(env.get("NOTIFY_SOCKET", ""))
        self._watchdog_usec = env.get("WATCHDOG_USEC", "")
        self._watchdog_pid = env.get("WATCHDOG_PID", "")
        self._sock: socket.socket | None = None
        self._lock = threading.Lock()

    @property
    def enabled(self) -> bool:
        return self._address is not None

    def notify(self, **fields: object) -> bool:
        """Send KEY=value lines; True when a datagram went out."""
        if self._address is None or not fields:
            return False
        payload = _format(fields)
        with self._lock:
            try:
                if self._sock is None:
                    self._sock = socket.socket(
                        socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC
                    )
                self._sock.sendto(payload, self._address)
            except OSError:
                # The manager went away or the socket is wrong: never take the agent down.
                return False
        return True

    def ready(self, status: str | None = None) -> bool:
        fields: dict[str, object] = {"READY": 1, "MAINPID": os.getpid()}
        if status is not None:
            fields["STATUS"] = status
        return self.notify(**fields)

    def status(self, text: str) -> bool:
        return self.notify(STATUS=text)

    def watchdog(self) -> bool:
        return self.notify(WATCHDOG=1)

    def reloading(self) -> bool:
        return self.notify(RELOADING=1)

    def stopping(self, status: str | None = None) -> bool:
        fields: dict[str, object] = {"STOPPING": 1}
        if status is not None:
            fields["STATUS"] = status
        return self.notify(**fields)

    def watchdog_interval(self) -> float | None:
        """Seconds between pings (half of WatchdogSec), or None when no watchdog applies to us."""
        try:
            usec = int(self._watchdog_usec)
        except ValueError:
            return None
        if usec <= 0:
            return None
        if self._watchdog_pid:
            try:
                if int(self._watchdog_pid) != os.getpid():
                    return None
            except ValueError:
                return None
        return usec / 1_000_000 / 2

    def close(self) -> None:
        with self._lock:
            if self._sock is not None:
                self._sock.close()
                self._sock = None


_default: Notifier | None = None


def default_notifier() -> Notifier:
    """One process-wide notifier built from the environment at first use."""
    global _default
    if _default is None:
        _default = Notifier()
    return _default


def notify(**fields: object) -> bool:
    """sd_notify with the process environment, e.g. notify(READY=1, STATUS="collecting")."""
    return default_notifier().notify(**fields)
