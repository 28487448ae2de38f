"""agentctl's side of the Unix socket: small synchronous HTTP client, errors as one line.

The daemon answers errors as JSON `{"error": "<one line>", "exit_code": N}`; the client turns
them into CliError so agentctl prints the line and exits with the code.
"""

from __future__ import annotations

import http.client
import json
import socket
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from agent.core.exit_codes import ExitCode


class CliError(Exception):
    """One line for the user and the exit code to leave with."""

    def __init__(self, message: str, exit_code: int = ExitCode.FAILED) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: Path, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(str(self._path))
        except OSError:
            sock.close()
            raise
        self.sock = sock


class AgentClient:
    def __init__(self, socket_path: Path, timeout: float = 60.0) -> None:
        self.socket_path = socket_path
        self.timeout = timeout

    def _request(
        self, method: str, path: str, params: Mapping[str, Any] | None, body: Any
    ) -> http.client.HTTPResponse:
        query = {k: v for k, v in (params or {}).items() if v is not None}
        url = path + ("?" + urlencode(query, doseq=True) if query else "")
        conn = _UnixConnection(self.socket_path, self.timeout)
        headers = {"Accept": "application/json"}
        payload = None
        if body is not None:
            payload = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        try:
            conn.request(method, url, body=payload, headers=headers)
            return conn.getresponse()
        except (FileNotFoundError, ConnectionRefusedError) as e:
            raise CliError(
                f"agent is not running (no socket at {self.socket_path}: {e.strerror})",
                ExitCode.UNAVAILABLE,
            ) from None
        except PermissionError:
            raise CliError(
                f"permission denied on {self.socket_path} (run as root or a member of its group)",
                ExitCode.UNAVAILABLE,
            ) from None
        except TimeoutError:
            raise CliError(
                f"agent did not answer within {self.timeout:g} s", ExitCode.FAILED
            ) from None
        except OSError as e:
            raise CliError(f"cannot talk to the agent: {e}", ExitCode.UNAVAILABLE) from None

    @staticmethod
    def _check(resp: http.client.HTTPResponse) -> bytes:
        data = resp.read()
        if resp.status < 400:
            return data
        try:
            err = json.loads(data)
            message = str(err.get("error", data.decode(errors="replace")))
            code = int(err.get("exit_code", ExitCode.FAILED))
        except (ValueError, AttributeError):
            message, code = data.decode(errors="replace").strip() or resp.reason, ExitCode.FAILED
        raise CliError(message.splitlines()[0] if message else resp.reason, code)

    def get(self, path: str, params: Mapping[str, Any] | None = None) -> Any:
        return json.loads(self._check(self._request("GET", path, params, None)))

    def post(self, path: str, body: Any = None, params: Mapping[str, Any] | None = None) -> Any:
        payload = body if body is not None else {}
        return json.loads(self._check(self._request("POST", path, params, payload)))

    def delete(self, path: str, params: Mapping[str, Any] | None = None) -> Any:
        return json.loads(self._check(self._request("DELETE", path, params, None)))

    def get_bytes(self, path: str, params: Mapping[str, Any] | None = None) -> bytes:
        return self._check(self._request("GET", path, params, None))

    def stream_lines(
        self, method: str, path: str, params: Mapping[str, Any] | None = None, body: Any = None
    ) -> Iterator[bytes]:
        """Lines of a streamed response (SSE, NDJSON progress), as they arrive."""
        resp = self._request(method, path, params, body)
        if resp.status >= 400:
            self._check(resp)
        while True:
            line = resp.readline()
            if not line:
                return
            yield line
