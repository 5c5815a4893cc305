"""Settings: one validated model decides what a worker runs.

Sources, highest first: CLI flags, ``LOOPLANE_*`` environment variables (nested with ``__``,
as in ``LOOPLANE_STORAGE__PATH``; the bare ``LOOPLANE_STORAGE=memory`` selects the backend),
a TOML file, and the defaults below. The file is the one named by ``--config`` or
``LOOPLANE_CONFIG``, else ``./looplane.toml`` when present, else the ``[tool.looplane]`` table
of ``./pyproject.toml``. This module is the only reader of the environment and of config
files; components take plain arguments.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Annotated, Any

from pydantic import (
    BaseModel,
    BeforeValidator,
    ByteSize,
    ConfigDict,
    Field,
    NonNegativeInt,
    PositiveInt,
    SecretStr,
)
from pydantic_settings import BaseSettings, SettingsConfigDict

from looplane.task import BackoffKind

__all__ = [
    "Duration",
    "ResultSettings",
    "RetrySettings",
    "SerializerSettings",
    "Settings",
    "StorageSettings",
    "TaskSettings",
    "WorkerSettings",
    "parse_duration",
]

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*(ms|s|m|h|d)?\s*$")


def parse_duration(value: Any) -> Any:
    """Read ``30s``, ``5m``, ``1.5h``, ``250ms``, ``2d`` or a plain number as seconds.

    Anything else is passed on for the field's own validation to refuse.
    """
    if isinstance(value, str):
        match = _DURATION.match(value)
        if match is None:
            raise ValueError(
                f"{value!r} is not a duration (use a number of seconds, or 250ms, 30s, 5m, 2h, 1d)"
            )
        return float(match.group(1)) * _UNITS[match.group(2) or "s"]
    is_number = isinstance(value, int | float) and not isinstance(value, bool)
    if is_number and (not math.isfinite(value) or value < 0):
        raise ValueError(f"{value!r} is not a duration (it must be a finite number >= 0)")
    return value


def _none_word(value: Any) -> Any:
    if isinstance(value, str) and value.strip().lower() in ("none", "never", "off", ""):
        return None
    return value


Duration = Annotated[float, BeforeValidator(parse_duration)]
"""Seconds, written as a number or as ``30s``, ``5m``, ``1h``."""

OptionalDuration = Annotated[
    float | None, BeforeValidator(parse_duration), BeforeValidator(_none_word)
]
"""A duration, or ``none`` / ``never`` for no limit."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_default=True)


class StorageSettings(_Section):
    """Where tasks wait: ``memory``, ``lmdb`` or ``package.module:ClassName``."""

    backend: str = "lmdb"
    path: Path = Path("/tmp/looplane")
    map_size: ByteSize = Field(default=ByteSize(1 << 30))
    max_readers: PositiveInt = 1024
    lease: Duration = 30.0
    queue: str = "default"
    url: SecretStr | None = None
    options: dict[str, Any] = Field(default_factory=dict)


class ResultSettings(_Section):
    """Where results are kept; by default the same kind and place as the storage."""

    backend: str | None = None
    path: Path | None = None
    ttl: OptionalDuration = 86_400.0
    url: SecretStr | None = None
    options: dict[str, Any] = Field(default_factory=dict)


class SerializerSettings(_Section):
    """How tasks become bytes: ``json`` or ``package.module:ClassName``."""

    backend: str = "json"
    encoding: str = "utf-8"
    max_payload: ByteSize = Field(default=ByteSize(16 * 1024 * 1024))
    options: dict[str, Any] = Field(default_factory=dict)


class WorkerSettings(_Section):
    """How a worker runs tasks."""

    concurrency: PositiveInt = 10
    shutdown_grace: Duration = 30.0


class RetrySettings(_Section):
    """Retry defaults for tasks whose function and send set none."""

    retries: NonNegativeInt = 3
    backoff: BackoffKind = BackoffKind.EXPONENTIAL
    base_delay: Duration = 1.0
    max_delay: Duration = 300.0
    jitter: bool = True


class TaskSettings(_Section):
    """Defaults for every task."""

    timeout: OptionalDuration = None


class Settings(BaseSettings):
    """Everything a worker, a producer or `looplane.from_config` needs, validated."""

    model_config = SettingsConfigDict(
        env_prefix="LOOPLANE_",
        env_nested_delimiter="__",
        extra="forbid",
        validate_default=True,
    )

    app: list[str] = Field(default_factory=list)
    storage: StorageSettings = Field(default_factory=StorageSettings)
    results: ResultSettings = Field(default_factory=ResultSettings)
    serializer: SerializerSettings = Field(default_factory=SerializerSettings)
    worker: WorkerSettings = Field(default_factory=WorkerSettings)
    retry: RetrySettings = Field(default_factory=RetrySettings)
    task: TaskSettings = Field(default_factory=TaskSettings)
