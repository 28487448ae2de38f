"""Configuration: embedded defaults, a TOML file, then command-line overrides.

Unknown keys and bad values are a ConfigError whose message is one line naming the key.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from agent.core.component import Component, Setting

DEFAULT_CONFIG_PATH = Path("/etc/container-agent/agent.toml")
#: Below Prometheus's exporter allocation range (9100-9999) and clear of its own 9090-9094.
DEFAULT_PORT = 9067
LOG_LEVELS = ("debug", "info", "warning", "error")


class ConfigError(Exception):
    """A bad configuration; str(e) is one line for the user."""


def _interval(v: Any) -> str | None:
    return None if 1 <= v <= 60 else "must be between 1 and 60 seconds"


def _listen(v: Any) -> str | None:
    if v == "":
        return None
    host, sep, port = str(v).rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        return "must be HOST:PORT (or empty to disable TCP)"
    return None


def _level(v: Any) -> str | None:
    return None if v in LOG_LEVELS else f"must be one of {', '.join(LOG_LEVELS)}"


#: The metric groups `metrics_groups` may name (each Spec's group in agent/exporters/metrics.py;
#: workload_info is always exported).
METRIC_GROUPS = ("cpu", "cpu_throttling", "memory", "memory_stat", "io", "pids", "pressure",
                 "state")


def _metric_groups(v: Any) -> str | None:
    unknown = [g for g in v if g not in METRIC_GROUPS]
    if unknown:
        return f"unknown metric group {unknown[0]!r} (known: {', '.join(METRIC_GROUPS)})"
    return None


def _default_state_dir() -> str:
    return "/var/lib/container-agent" if os.geteuid() == 0 else "./var"


def _default_socket() -> str:
    return "/run/container-agent/agent.sock" if os.geteuid() == 0 else "./var/agent.sock"


TOP_LEVEL: Mapping[str, Setting] = MappingProxyType(
    {
        "interval": Setting((int, float), 5, "seconds between cycles (1-60)", _interval),
        "listen": Setting(
            str, f"127.0.0.1:{DEFAULT_PORT}", "TCP HOST:PORT for /metrics and the API", _listen
        ),
        "socket": Setting(str, "", "Unix socket path (API and control verbs)"),
        "socket_mode": Setting(int, 0o660, "permission bits of the Unix socket"),
        "state_dir": Setting(str, "", "directory of the SQLite store and checkpoints"),
        "log_level": Setting(str, "info", "debug, info, warning or error", _level),
        "cadvisor": Setting(bool, False, "also export cAdvisor's metric names and labels"),
        "rescan_interval": Setting((int, float), 60, "seconds between full rescans (safety net)"),
        # /metrics: what is exported per workload (agent/exporters/metrics.py MetricsOptions).
        "metrics_identity_labels": Setting(
            bool, False, "repeat the identity labels on every workload series"
        ),
        "metrics_groups": Setting(list, list(METRIC_GROUPS), "metric groups exported",
                                  _metric_groups),
        "metrics_plain_cgroups": Setting(bool, True, "export plain cgroups (not containers, "
                                         "services)"),
        # The store's writer thread (agent/core/store_writer.py).
        "store_queue_size": Setting(int, 10_000, "events queued for the SQLite writer before "
                                    "new ones are dropped",
                                    lambda v: None if v > 0 else "must be > 0"),
    }
)


@dataclass(frozen=True)
class AgentConfig:
    values: Mapping[str, Any]
    source: Path | None
    #: Command-line values, kept so a SIGHUP reload applies them again over the file.
    overrides: Mapping[str, Any] = field(default_factory=dict)

    def __getitem__(self, key: str) -> Any:
        return self.values[key]

    @property
    def state_dir(self) -> Path:
        return Path(self.values["state_dir"])

    @property
    def socket(self) -> Path:
        return Path(self.values["socket"])


def _check(key: str, spec: Setting, value: Any) -> Any:
    types = spec.type if isinstance(spec.type, tuple) else (spec.type,)
    # bool is an int in Python: refuse True where a number is wanted, and 1 where a bool is.
    if isinstance(value, bool) and bool not in types:
        raise ConfigError(f"{key}: expected {_type_name(types)}, got a boolean")
    if not isinstance(value, types):
        raise ConfigError(f"{key}: expected {_type_name(types)}, got {type(value).__name__}")
    if spec.check is not None:
        problem = spec.check(value)
        if problem:
            raise ConfigError(f"{key}: {problem} (got {value!r})")
    return value


def _type_name(types: tuple[type, ...]) -> str:
    names = {int: "a number", float: "a number", str: "a string", bool: "true or false",
             list: "a list", dict: "a table"}
    return " or ".join(sorted({names.get(t, t.__name__) for t in types}))


def _merge_section(
    prefix: str, schema: Mapping[str, Setting], raw: Mapping[str, Any]
) -> dict[str, Any]:
    out = {k: s.default for k, s in schema.items()}
    for key, value in raw.items():
        full = f"{prefix}{key}"
        if key not in schema:
            raise ConfigError(f"{full}: unknown key")
        out[key] = _check(full, schema[key], value)
    return out


def load_config(
    path: Path | None,
    components: list[Component],
    overrides: Mapping[str, Any] | None = None,
    *,
    required: bool = False,
) -> AgentConfig:
    """Defaults, then the TOML file (if it exists, or must when `required`), then overrides."""
    raw: dict[str, Any] = {}
    source: Path | None = None
    if path is not None:
        try:
            raw = tomllib.loads(path.read_text())
            source = path
        except FileNotFoundError:
            if required:
                raise ConfigError(f"{path}: no such file") from None
        except PermissionError:
            raise ConfigError(f"{path}: permission denied") from None
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"{path}: not valid TOML: {e}") from None
        except UnicodeDecodeError:
            raise ConfigError(f"{path}: not UTF-8 text") from None
    sections = {c.name: c.settings for c in components}
    top_raw = {k: v for k, v in raw.items() if not isinstance(v, dict)}
    values: dict[str, Any] = _merge_section("", TOP_LEVEL, top_raw)
    for key, value in raw.items():
        if isinstance(value, dict) and key not in sections:
            raise ConfigError(f"[{key}]: unknown section")
    for name, schema in sections.items():
        sect = raw.get(name, {})
        values[name] = MappingProxyType(_merge_section(f"{name}.", schema, sect))
    for key, value in (overrides or {}).items():
        if value is None:
            continue
        if key not in TOP_LEVEL:
            raise ConfigError(f"{key}: unknown option")
        values[key] = _check(key, TOP_LEVEL[key], value)
    if not values["state_dir"]:
        values["state_dir"] = _default_state_dir()
    if not values["socket"]:
        values["socket"] = _default_socket()
    kept = MappingProxyType({k: v for k, v in (overrides or {}).items() if v is not None})
    return AgentConfig(values=MappingProxyType(values), source=source, overrides=kept)
