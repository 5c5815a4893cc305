"""Settings: one validated model decides what a worker runs.

Sources, highest first: overrides (CLI flags, `looplane.from_config` keywords), ``LOOPLANE_*``
environment variables (nested with ``__``, as in ``LOOPLANE_STORAGE__PATH``; the bare
``LOOPLANE_STORAGE=memory`` selects the backend), a TOML file, and the defaults below. The file
is the one named by ``--config`` or ``LOOPLANE_CONFIG``, else ``./looplane.toml`` when present,
else the ``[tool.looplane]`` table of ``./pyproject.toml``. This module is the only reader of the
environment and of config files; components take plain arguments.

Why the layers are gathered here rather than by pydantic-settings' own sources: every problem
must name the place its value came from (``file looplane.toml:4``, ``env LOOPLANE_…``,
``flag --concurrency``), all problems are reported at once, a typo in the file or the
environment is an error rather than silently ignored, and a bare ``LOOPLANE_STORAGE=memory``
must combine with ``LOOPLANE_STORAGE__PATH``. The built-in sources know none of that, so each
layer is read into entries that remember their origin, merged in order, and validated once by
the model. `Settings` plugs the same reader into `settings_customise_sources`, so
``Settings()`` sees what `load_settings` sees.

Environment values are strings. An empty variable counts as unset, except a list setting
(``LOOPLANE_APP=``), where it means the empty list. Lists are JSON (``["a", "b"]``) or
comma-separated (``a, b``). Booleans are true/false, yes/no, on/off or 1/0, in any case.
"""

from __future__ import annotations

import difflib
import json
import math
import os
import re
import tomllib
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, get_origin
from urllib.parse import unquote, urlsplit, urlunsplit

from pydantic import (
    BaseModel,
    BeforeValidator,
    ByteSize,
    ConfigDict,
    Field,
    NonNegativeInt,
    PositiveInt,
    SecretStr,
    ValidationError,
)
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from looplane.errors import ConfigError
from looplane.task import BackoffKind

__all__ = [
    "CONFIG_ENV",
    "ENV_PREFIX",
    "MASK",
    "SECRET_KEYS",
    "Duration",
    "LoadedSettings",
    "OptionalDuration",
    "ResultSettings",
    "RetrySettings",
    "SerializerSettings",
    "Settings",
    "StorageSettings",
    "TaskSettings",
    "WorkerSettings",
    "leaf_keys",
    "load_settings",
    "mask_url_in",
    "parse_duration",
    "redact_url",
    "to_document",
]

ENV_PREFIX = "LOOPLANE_"
"""Prefix of every environment variable Looplane reads."""

CONFIG_ENV = "LOOPLANE_CONFIG"
"""The environment variable that names the config file; not itself a setting."""

MASK = "********"
"""What a secret value is shown as."""

SECRET_KEYS = frozenset({"storage.url", "results.url"})
"""Dotted keys whose values are secret: masked in documents and never shown in errors."""

_NESTING = "__"
_NOT_SETTINGS = ("LOOPLANE_TEST_",)
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*(ms|s|m|h|d)?\s*$")
_DURATION_FORMAT = "a number of seconds, or 250ms, 30s, 5m, 2h, 1d"
_BACKEND = re.compile(r"^[A-Za-z_]\w*$|^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")
_SECRET_PARAMS = frozenset({"password", "pass", "pwd", "secret", "token", "access_token", "key"})


def parse_duration(value: Any) -> Any:
    """Read ``30s``, ``5m``, ``1.5h``, ``250ms``, ``2d`` or a plain number as seconds.

    Anything else is passed on for the field's own validation to refuse.
    """
    if isinstance(value, str):
        match = _DURATION.match(value)
        if match is None:
            raise ValueError(f"expected a duration: {_DURATION_FORMAT}")
        return float(match.group(1)) * _UNITS[match.group(2) or "s"]
    is_number = isinstance(value, int | float) and not isinstance(value, bool)
    if is_number and (not math.isfinite(value) or value < 0):
        raise ValueError("expected a duration: a finite number of seconds >= 0")
    return value


def _none_word(value: Any) -> Any:
    if isinstance(value, str) and value.strip().lower() in ("none", "never", "off", ""):
        return None
    return value


def _empty_is_none(value: Any) -> Any:
    return None if value == "" else value


def _name_list(value: Any) -> Any:
    """Read a list written as JSON (``["a", "b"]``) or comma-separated (``a, b``)."""
    if not isinstance(value, str):
        return value
    if value.lstrip().startswith("["):
        try:
            return json.loads(value)
        except json.JSONDecodeError as exc:
            raise ValueError(
                f'expected a JSON list such as ["a", "b"] or comma-separated names such as a,b'
                f" ({exc.msg} at column {exc.colno})"
            ) from None
    return [item.strip() for item in value.split(",") if item.strip()]


def _json_table(value: Any) -> Any:
    """Read a table written as a JSON object, as environment variables must."""
    if not isinstance(value, str):
        return value
    try:
        table = json.loads(value)
    except json.JSONDecodeError:
        table = None
    if not isinstance(table, dict):
        raise ValueError('expected a table, or in the environment a JSON object such as {"a": 1}')
    return table


def _backend_name(value: Any) -> Any:
    if isinstance(value, str) and not _BACKEND.match(value):
        raise ValueError(
            "expected a backend alias such as memory or lmdb, or an import path "
            "package.module:ClassName"
        )
    return value


Duration = Annotated[float, BeforeValidator(parse_duration)]
"""Seconds, written as a number or as ``30s``, ``5m``, ``1h``."""

PositiveDuration = Annotated[float, Field(gt=0), BeforeValidator(parse_duration)]
"""A duration longer than zero."""

OptionalDuration = Annotated[
    Annotated[float, Field(gt=0)] | None,
    BeforeValidator(parse_duration),
    BeforeValidator(_none_word),
]
"""A duration longer than zero, or ``none`` / ``never`` for no limit."""

BackendName = Annotated[str, BeforeValidator(_backend_name)]
Options = Annotated[dict[str, Any], BeforeValidator(_json_table)]
Url = Annotated[SecretStr | None, BeforeValidator(_empty_is_none)]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_default=True)


class StorageSettings(_Section):
    """Where tasks wait: ``memory``, ``lmdb``, ``redis`` or ``package.module:ClassName``."""

    backend: BackendName = "lmdb"
    path: Path = Path("/tmp/looplane")
    map_size: ByteSize = Field(default=ByteSize(1 << 30))
    # The cap the LMDB map may double up to; near it sends fail with StorageFull. A cap
    # below map_size is raised to map_size.
    max_map_size: ByteSize = Field(default=ByteSize(64 << 30))
    max_readers: PositiveInt = 1024
    sync: bool = Field(
        default=True,
        description=(
            "LMDB durability. True (the default): a send, ack or result has reached the disk "
            "when its call returns. False: each commit defers its metadata flush to the next "
            "one (one fsync instead of two); a process crash, even SIGKILL, loses nothing, "
            "an OS crash or power loss may undo the last commit, the file is never corrupted. "
            "LMDB results follow this setting, also at their own results.path."
        ),
    )
    lease: PositiveDuration = 30.0
    queue: str = "default"
    url: Url = None
    max_connections: PositiveInt = 10
    options: Options = Field(default_factory=dict)


class ResultSettings(_Section):
    """Where results are kept; by default the same kind and place as the storage."""

    backend: Annotated[BackendName | None, BeforeValidator(_empty_is_none)] = None
    path: Annotated[Path | None, BeforeValidator(_empty_is_none)] = None
    ttl: OptionalDuration = 86_400.0
    url: Url = None
    options: Options = Field(default_factory=dict)


class SerializerSettings(_Section):
    """How tasks become bytes: ``json`` or ``package.module:ClassName``."""

    backend: BackendName = "json"
    encoding: str = "utf-8"
    max_payload: ByteSize = Field(default=ByteSize(16 * 1024 * 1024))
    options: Options = Field(default_factory=dict)


class WorkerSettings(_Section):
    """How a worker runs tasks."""

    concurrency: PositiveInt = 10
    shutdown_grace: Duration = 30.0
    processes: PositiveInt = 1


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


# Set while `load_settings` validates its own merged layers, so that the settings source
# below does not read the process environment and working directory a second time.
_LOADING: ContextVar[bool] = ContextVar("looplane_config_loading", default=False)


class _LooplaneSource(PydanticBaseSettingsSource):
    """The environment and the config file, read as `load_settings` reads them."""

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        """Not used: `__call__` reads every field at once."""
        return None, field_name, False  # pragma: no cover - pydantic-settings only calls __call__

    def __call__(self) -> dict[str, Any]:
        if _LOADING.get():
            return {}
        return load_settings().settings.model_dump()


class Settings(BaseSettings):
    """Everything a worker, a producer or `looplane.from_config` needs, validated.

    ``Settings()`` reads the environment and the config file exactly as `load_settings` does,
    and keyword arguments override both; prefer `load_settings`, which also says where each
    value came from.
    """

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter=_NESTING,
        extra="forbid",
        validate_default=True,
        # A bad value of a URL setting may hold its password; pydantic's own message would
        # print it. `load_settings` still reads the values from `errors()` and masks secrets.
        hide_input_in_errors=True,
    )

    app: Annotated[list[str], BeforeValidator(_name_list)] = Field(default_factory=list)
    storage: StorageSettings = Field(default_factory=StorageSettings)
    results: ResultSettings = Field(default_factory=ResultSettings)
    serializer: SerializerSettings = Field(default_factory=SerializerSettings)
    worker: WorkerSettings = Field(default_factory=WorkerSettings)
    retry: RetrySettings = Field(default_factory=RetrySettings)
    task: TaskSettings = Field(default_factory=TaskSettings)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Keyword arguments first, then the environment and the file as `load_settings` reads."""
        return init_settings, _LooplaneSource(settings_cls)


def _sections() -> dict[str, type[BaseModel]]:
    found: dict[str, type[BaseModel]] = {}
    for name, field in Settings.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            found[name] = annotation
    return found


_SECTIONS = _sections()
_SELECTABLE = frozenset(
    name for name, model in _SECTIONS.items() if "backend" in model.model_fields
)


def leaf_keys() -> list[str]:
    """Every setting's dotted key, in model order (``app``, ``storage.backend``, ...).

    A table of free-form options (``storage.options``) is one leaf.
    """
    keys: list[str] = []
    for name in Settings.model_fields:
        section = _SECTIONS.get(name)
        keys.extend(
            [name] if section is None else [f"{name}.{sub}" for sub in section.model_fields]
        )
    return keys


def _leaves_of_kind(kind: type) -> frozenset[str]:
    """Dotted keys of the settings whose type is `kind` (``list`` or ``dict``)."""
    found: set[str] = set()
    for name, field in Settings.model_fields.items():
        section = _SECTIONS.get(name)
        if section is None:
            found.update([name] if get_origin(field.annotation) is kind else [])
            continue
        for sub, sub_field in section.model_fields.items():
            found.update([f"{name}.{sub}"] if get_origin(sub_field.annotation) is kind else [])
    return frozenset(found)


_LEAVES = frozenset(leaf_keys())
_LIST_LEAVES = _leaves_of_kind(list)
_TABLE_LEAVES = _leaves_of_kind(dict)


@dataclass(frozen=True, slots=True)
class LoadedSettings:
    """Validated settings and where each value came from.

    Attributes:
        settings: The validated settings.
        origins: Every dotted leaf key mapped to ``default``, ``file looplane.toml:4``,
            ``env LOOPLANE_STORAGE__PATH`` or the name of the override that set it.
        config_file: The file that was read, or None when none was.
    """

    settings: Settings
    origins: dict[str, str]
    config_file: Path | None


@dataclass(frozen=True, slots=True)
class _Entry:
    """One value from one source, at a path of setting names."""

    path: tuple[str, ...]
    value: Any
    origin: str

    @property
    def leaf(self) -> str:
        return _leaf(self.path)


def _leaf(path: tuple[str, ...]) -> str:
    return ".".join(path[:2] if path[0] in _SECTIONS else path[:1])


def _is_section(path: tuple[str, ...]) -> bool:
    return len(path) == 1 and path[0] in _SECTIONS


def _holds_secret(section: str) -> bool:
    return any(key.startswith(f"{section}.") for key in SECRET_KEYS)


def _is_setting(path: tuple[str, ...]) -> bool:
    """Whether `path` names a setting, or a key inside a table of options."""
    return ".".join(path) in _LEAVES or (len(path) > 2 and _leaf(path) in _TABLE_LEAVES)


def _suggestion(path: tuple[str, ...]) -> str | None:
    """The setting a misspelt or misplaced `path` most likely meant, if any is close."""
    known = sorted(_LEAVES | _SECTIONS.keys())
    matches = difflib.get_close_matches(".".join(path), known, n=1, cutoff=0.75)
    if not matches:
        matches = [key for key in sorted(_LEAVES) if key.rsplit(".", 1)[-1] == path[-1]]
    return matches[0] if matches else None


def _expand(path: tuple[str, ...], value: Any) -> Iterator[tuple[tuple[str, ...], Any]]:
    """Spread a whole section into its settings; a bare string selects a backend."""
    if _is_section(path) and isinstance(value, Mapping):
        for key, item in value.items():
            yield (*path, str(key)), item
    elif _is_section(path) and isinstance(value, str) and path[0] in _SELECTABLE:
        yield (*path, "backend"), value
    else:
        yield path, value


def _entries_of(
    path: tuple[str, ...], value: Any, origin: str, problems: list[str]
) -> Iterator[_Entry]:
    """Turn one value from a source into entries; report unknown keys and misplaced values."""
    for sub_path, item in _expand(path, value):
        dotted = ".".join(sub_path)
        if _is_section(sub_path):
            what = "a backend name or a table" if dotted in _SELECTABLE else "a table"
            shown = _show(item, secret=_holds_secret(dotted))
            problems.append(f"{dotted}: expected {what} of settings (got {shown}, from {origin})")
        elif not _is_setting(sub_path):
            hint = _suggestion(sub_path)
            hint_text = "" if hint is None else f" (did you mean {hint}?)"
            problems.append(f"{dotted}: unknown setting{hint_text} (from {origin})")
        else:
            yield _Entry(sub_path, item, origin)


def _show(value: Any, *, secret: bool = False) -> str:
    if secret:
        return MASK
    if isinstance(value, Path):
        value = str(value)
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


# --- the file ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _File:
    """A config file that was found: where, how to name it, and the table that holds settings."""

    path: Path
    display: str
    root: tuple[str, ...]


def _display(path: Path, cwd: Path) -> str:
    try:
        return str(path.relative_to(cwd))
    except ValueError:
        return str(path)


def _find_file(
    config_file: str | Path | None,
    environ: Mapping[str, str],
    cwd: Path,
    names: Mapping[str, str],
    problems: list[str],
) -> _File | None:
    """Pick the file to read: the argument, then ``LOOPLANE_CONFIG``, then ``./looplane.toml``."""
    named, origin = config_file, names.get("config", "argument config_file")
    if not named:
        named, origin = environ.get(CONFIG_ENV) or None, f"env {CONFIG_ENV}"
    if named:
        path = cwd / Path(named).expanduser()
        if not path.is_file():
            problems.append(f"config file {_display(path, cwd)}: not found (from {origin})")
            return None
        root = ("tool", "looplane") if path.name == "pyproject.toml" else ()
        return _File(path, _display(path, cwd), root)
    if (cwd / "looplane.toml").is_file():
        return _File(cwd / "looplane.toml", "looplane.toml", ())
    if _has_tool_table(cwd / "pyproject.toml"):
        return _File(cwd / "pyproject.toml", "pyproject.toml", ("tool", "looplane"))
    return None


def _has_tool_table(path: Path) -> bool:
    # A pyproject.toml that cannot be read or parsed holds no Looplane settings as far as the
    # fallback is concerned; it is reported only when it was named explicitly.
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        return False
    tool = data.get("tool")
    return isinstance(tool, dict) and isinstance(tool.get("looplane"), dict)


_TOML_POSITION = re.compile(r"^(?P<msg>.*) \(at line (?P<line>\d+), column (?P<col>\d+)\)$")
_TOML_END = re.compile(r"^(?P<msg>.*) \(at end of document\)$")


def _syntax_problem(found: _File, text: str, error: str) -> str:
    """Name the file, line and column of a TOML syntax error (tomllib has them in its text)."""
    match = _TOML_POSITION.match(error)
    if match is not None:
        line, column, message = match["line"], match["col"], match["msg"]
    else:
        # An error at the end of the document (an unclosed array or string) is placed just
        # after the last character, where the editor's cursor would show it.
        match = _TOML_END.match(error)
        lines = text.splitlines() or [""]
        line, column = str(len(lines)), str(len(lines[-1]) + 1)
        message = error if match is None else f"{match['msg']} at end of file"
    return f"config file {found.display}:{line}:{column}: invalid TOML ({message})"


def _read_file(found: _File, problems: list[str]) -> tuple[dict[str, Any], str]:
    """Parse the file and return its settings table and its text (for line numbers)."""
    try:
        text = found.path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        problems.append(f"config file {found.display}: cannot be read ({exc})")
        return {}, ""
    try:
        data: Any = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        problems.append(_syntax_problem(found, text, str(exc)))
        return {}, ""
    for name in found.root:
        data = data.get(name, {}) if isinstance(data, dict) else None
    if not isinstance(data, dict):
        problems.append(f"config file {found.display}: {'.'.join(found.root)} is not a table")
        return {}, text
    return data, text


_TABLE = re.compile(r"^\s*\[\s*([^\[\]]+?)\s*\]\s*(#.*)?$")
_KEY = re.compile(r"^\s*([\w\-.\"' ]+?)\s*=")


def _toml_key(text: str) -> tuple[str, ...]:
    return tuple(part.strip().strip("\"'") for part in text.split("."))


def _line_of(text: str, path: tuple[str, ...]) -> int | None:
    """Find the line that sets `path` (root table included), or the closest enclosing table.

    Limitation: this scans lines rather than parsing, so a key written inside a multi-line
    string or array can be mistaken for a setting, and the line of a value in an inline table
    is that of the table. Lifted by: a TOML parser that records positions (tomllib does not).
    """
    table: tuple[str, ...] = ()
    best: tuple[int, int] | None = None
    for number, line in enumerate(text.splitlines(), start=1):
        header = _TABLE.match(line)
        if header is not None:
            table = key = _toml_key(header[1])
        else:
            assignment = _KEY.match(line)
            if assignment is None:
                continue
            key = table + _toml_key(assignment[1])
        if key == path:
            return number
        if path[: len(key)] == key and (best is None or len(key) > best[0]):
            best = (len(key), number)
    return None if best is None else best[1]


def _file_entries(found: _File, problems: list[str]) -> list[_Entry]:
    data, text = _read_file(found, problems)
    entries: list[_Entry] = []
    for key, value in data.items():
        for sub_path, item in _expand((key,), value):
            line = _line_of(text, found.root + sub_path)
            origin = f"file {found.display}" + ("" if line is None else f":{line}")
            entries.extend(_entries_of(sub_path, item, origin, problems))
    return entries


# --- the environment and the overrides ---------------------------------------------------------


def _env_path(name: str) -> tuple[str, ...] | None:
    """The setting path that variable `name` is meant to set, or None for other variables."""
    upper = name.upper()
    if not upper.startswith(ENV_PREFIX) or upper == CONFIG_ENV or upper.startswith(_NOT_SETTINGS):
        return None
    path = tuple(upper.removeprefix(ENV_PREFIX).lower().split(_NESTING))
    # A variable that nests, starts with a setting's name or is close to one is meant as a
    # setting, so a misspelling is reported; others (a deployment's LOOPLANE_HOME) are not ours.
    meant = len(path) > 1 or path[0] in Settings.model_fields or _suggestion(path) is not None
    return path if meant else None


def _env_entries(environ: Mapping[str, str], problems: list[str]) -> list[_Entry]:
    """Read ``LOOPLANE_*`` variables, reporting those that look like misspelt settings."""
    entries: list[_Entry] = []
    for name in sorted(environ):
        path, raw = _env_path(name), environ[name]
        if path is None or (raw == "" and _leaf(path) not in _LIST_LEAVES):
            continue
        value: str | dict[str, Any] = raw
        # A table is parsed here rather than by the model, so that it merges key by key
        # with the file's table and with variables that set one key of it.
        is_table = _is_section(path) or ".".join(path) in _TABLE_LEAVES
        if is_table and raw.lstrip().startswith("{"):
            value = _env_table(path, raw, f"env {name}", problems)
        entries.extend(_entries_of(path, value, f"env {name}", problems))
    return entries


def _env_table(
    path: tuple[str, ...], value: str, origin: str, problems: list[str]
) -> dict[str, Any]:
    """Read a table written as a JSON object, as in ``LOOPLANE_STORAGE='{...}'``."""
    try:
        table: dict[str, Any] = _json_table(value)
    except ValueError as exc:
        shown = _show(value, secret=_holds_secret(path[0]))
        problems.append(f"{'.'.join(path)}: {exc} (got {shown}, from {origin})")
        return {}
    return table


def _override_entries(
    overrides: Mapping[str, Any], names: Mapping[str, str], problems: list[str]
) -> list[_Entry]:
    entries: list[_Entry] = []
    for key, value in overrides.items():
        path = tuple(part for part in re.split(r"\.|__", key) if part)
        origin = names.get(key) or names.get(".".join(path)) or "override"
        if not path:
            problems.append(f"{key!r}: unknown setting (from {origin})")
            continue
        entries.extend(_entries_of(path, value, origin, problems))
    return entries


# --- merging and validating --------------------------------------------------------------------


def _deep_set(target: dict[str, Any], path: tuple[str, ...], value: Any) -> None:
    *parents, last = path
    for part in parents:
        child = target.get(part)
        if not isinstance(child, dict):
            child = target[part] = {}
        target = child
    current = target.get(last)
    if isinstance(value, Mapping) and isinstance(current, dict):
        for key, item in value.items():
            _deep_set(current, (str(key),), item)
    else:
        target[last] = dict(value) if isinstance(value, Mapping) else value


def _merge(layers: list[list[_Entry]]) -> tuple[dict[str, Any], dict[str, str]]:
    """Apply the layers lowest first, so each value and origin is the highest source's."""
    values: dict[str, Any] = {}
    origins = dict.fromkeys(leaf_keys(), "default")
    for layer in layers:
        for entry in layer:
            _deep_set(values, entry.path, entry.value)
            origins[entry.leaf] = entry.origin
    return values, origins


_MESSAGES = {
    "bool_parsing": "expected a boolean: true/false, yes/no, on/off or 1/0",
    "bool_type": "expected a boolean: true/false, yes/no, on/off or 1/0",
    "int_parsing": "expected a whole number",
    "int_type": "expected a whole number",
    "int_from_float": "expected a whole number",
    "float_parsing": "expected a number",
    "float_type": "expected a number",
    "byte_size": "expected a size: a number of bytes, or 512KiB, 64MiB, 1GiB, 1GB",
    "byte_size_unit": "expected a size: a number of bytes, or 512KiB, 64MiB, 1GiB, 1GB",
    "list_type": 'expected a list: a TOML array, or in the environment ["a", "b"] or a,b',
    "string_type": "expected a string",
    "path_type": "expected a path",
    "dict_type": "expected a table",
}


def _written(values: Mapping[str, Any], loc: tuple[int | str, ...], default: Any) -> Any:
    """The value as the source wrote it (``"0s"``, not the ``0.0`` a validator made of it)."""
    value: Any = values
    for part in loc:
        found_in_table = isinstance(value, Mapping) and part in value
        found_in_list = isinstance(value, list) and isinstance(part, int) and part < len(value)
        if not (found_in_table or found_in_list):
            # Errors point at keys the sources set, and every default is valid, so this is
            # only a guard against a pydantic location that is not a path into the input.
            return default  # pragma: no cover - see above
        value = value[part]
    return value


def _describe(
    error: Mapping[str, Any], values: Mapping[str, Any], origins: Mapping[str, str]
) -> str:
    """One line for one validation error: key, what is wrong, the value and its origin."""
    loc = [str(part) for part in error["loc"] if not isinstance(part, int)]
    items = "".join(f"[{part}]" for part in error["loc"] if isinstance(part, int))
    leaf = _leaf(tuple(loc)) if loc else "settings"
    message = _MESSAGES.get(error["type"])
    if message is None:
        message = str(error["msg"]).removeprefix("Value error, ")
        message = message.replace("Input should be", "should be")
    value = _show(_written(values, error["loc"], error["input"]), secret=leaf in SECRET_KEYS)
    origin = origins.get(leaf, "default")
    return f"{'.'.join(loc)}{items}: {message} (got {value}, from {origin})"


@contextmanager
def _loading() -> Iterator[None]:
    token = _LOADING.set(True)
    try:
        yield
    finally:
        _LOADING.reset(token)


def _validate(values: dict[str, Any], origins: Mapping[str, str], problems: list[str]) -> Settings:
    try:
        with _loading():
            settings = Settings(**values)
    except ValidationError as exc:
        problems.extend(_describe(error, values, origins) for error in exc.errors())
        raise ConfigError(problems=problems) from None
    if problems:
        raise ConfigError(problems=problems)
    return settings


def load_settings(
    config_file: str | Path | None = None,
    *,
    overrides: Mapping[str, Any] | None = None,
    override_names: Mapping[str, str] | None = None,
    environ: Mapping[str, str] | None = None,
    cwd: Path | None = None,
) -> LoadedSettings:
    """Read, merge and validate every source: overrides > environment > file > defaults.

    Args:
        config_file: The TOML file to read; relative to `cwd`. Without it, ``LOOPLANE_CONFIG``,
            then ``looplane.toml``, then the ``[tool.looplane]`` table of ``pyproject.toml``.
            A ``pyproject.toml`` named here is read from its ``[tool.looplane]`` table.
        overrides: Values the caller set explicitly, by dotted key (``worker.concurrency``);
            a section name takes a table, or a string that selects its backend
            (``storage="memory"``). Pass only what the user gave: a value equal to the
            default still wins over the file and the environment.
        override_names: How to name each override's origin in errors and in `origins`, by the
            key used in `overrides` (``{"worker.concurrency": "flag --concurrency"}``);
            ``"config"`` names where `config_file` came from. Unnamed ones are "override".
        environ: The environment to read; `os.environ` by default.
        cwd: The directory where relative paths and the default files are found; the
            process's working directory by default.

    Raises:
        ConfigError: One or more problems, all listed in its ``problems``, one a line, each
            naming the key, what is wrong, the value (masked when secret) and its origin.
    """
    environ = os.environ if environ is None else environ
    cwd = Path.cwd() if cwd is None else cwd
    names = override_names or {}
    problems: list[str] = []

    found = _find_file(config_file, environ, cwd, names, problems)
    file_entries = [] if found is None else _file_entries(found, problems)
    env_entries = _env_entries(environ, problems)
    override_entries = _override_entries(overrides or {}, names, problems)

    values, origins = _merge([file_entries, env_entries, override_entries])
    settings = _validate(values, origins, problems)
    return LoadedSettings(settings, origins, None if found is None else found.path)


# --- output ------------------------------------------------------------------------------------


def _without_none(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: _without_none(item) for key, item in value.items() if item is not None}
    if isinstance(value, list):
        return [_without_none(item) for item in value if item is not None]
    return value


def to_document(settings: Settings, *, reveal_secrets: bool = False) -> dict[str, Any]:
    """The settings as plain TOML/JSON types, in the shape a config file takes.

    Paths become strings, durations float seconds, sizes whole bytes and enums their values.
    A setting that is None is left out when None is its default (loading the document back
    gives None again); otherwise (a ``results.ttl`` of no limit) it is written ``"never"``.
    Each secret (``storage.url``, ``results.url``) is replaced whole by ``"********"`` unless
    `reveal_secrets`; use `redact_url` to show a URL with only its password hidden. Writing the
    result with tomli-w and loading it with `load_settings` gives equal settings when secrets
    are revealed.

    An option whose name says it is secret (password, secret, token, key, credentials) is
    masked the same way.
    """
    document: dict[str, Any] = settings.model_dump(mode="json")
    for section in document.values():
        if isinstance(section, dict) and isinstance(section.get("options"), dict):
            section["options"] = {
                name: MASK if _looks_secret(name) and not reveal_secrets else value
                for name, value in section["options"].items()
            }
    for key in SECRET_KEYS:
        section, name = key.split(".")
        secret = getattr(getattr(settings, section), name)
        if secret is not None:
            document[section][name] = secret.get_secret_value() if reveal_secrets else MASK
    for name, section_model in _SECTIONS.items():
        for sub, field in section_model.model_fields.items():
            is_default_none = field.get_default(call_default_factory=True) is None
            if document[name][sub] is None and not is_default_none:
                document[name][sub] = "never"
    result: dict[str, Any] = _without_none(document)
    return result


def _looks_secret(name: str) -> bool:
    lowered = name.lower()
    return any(word in lowered for word in ("password", "secret", "token", "key", "credential"))


def _redact_param(param: str) -> str:
    name, eq, _ = param.partition("=")
    return f"{name}={MASK}" if eq and name.lower() in _SECRET_PARAMS else param


def _userinfo_cut_short(url: str) -> bool:
    """True if a ``/``, ``?`` or ``#`` in the user name or password ends the URL's host part.

    A parser then reads part of the password as the host or port and quotes it in errors.
    """
    _, sep, rest = url.partition("://")
    return bool(sep) and "@" in rest and "@" not in urlsplit(url).netloc


def mask_url_in(text: str, url: str) -> str:
    """`text`, a message that may quote `url`, with the URL redacted and its password masked.

    A message about a URL whose password holds an unescaped ``/``, ``?`` or ``#`` may quote
    any piece of it, so it is replaced whole by one that says what to fix.
    """
    try:
        cut_short = _userinfo_cut_short(url)
        password = urlsplit(url).password or ""
    except ValueError:
        return text.replace(url, MASK)
    if text == url:
        return redact_url(url)
    if cut_short:
        return (
            f"the URL {redact_url(url)} does not parse: its user name or password holds an "
            "unescaped '/', '?' or '#'; percent-encode them (%2F, %3F, %23)"
        )
    text = text.replace(url, redact_url(url))
    for form in {password, unquote(password)} - {""}:
        text = text.replace(form, MASK)
    return text


def redact_url(url: str) -> str:
    """Hide the password of a URL, and any password or token in its query, for display.

    ``redis://user:pw@host:6379/0`` becomes ``redis://user:********@host:6379/0``. A value
    that does not parse as a URL with a scheme is masked whole.
    """
    try:
        parts = urlsplit(url)
    except ValueError:
        return MASK
    if not parts.scheme:
        return MASK
    if _userinfo_cut_short(url):
        return f"{parts.scheme}://{MASK}@{url.rpartition('@')[2]}"
    userinfo, at, host = parts.netloc.rpartition("@")
    netloc = parts.netloc
    if at and ":" in userinfo:
        netloc = f"{userinfo.split(':', 1)[0]}:{MASK}@{host}"
    query = "&".join(_redact_param(param) for param in parts.query.split("&"))
    return urlunsplit(parts._replace(netloc=netloc, query=query if parts.query else ""))
