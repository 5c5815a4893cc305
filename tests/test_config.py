"""Settings: the four sources, their precedence, every error path, and the shipped files."""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path
from typing import Any

import pytest
import tomli_w
from pydantic import SecretStr

from looplane.config import (
    MASK,
    Settings,
    StorageSettings,
    leaf_keys,
    load_settings,
    parse_duration,
    redact_url,
    to_document,
)
from looplane.errors import ConfigError
from looplane.task import BackoffKind

REPO = Path(__file__).resolve().parent.parent
CONCURRENCY_FLAG = {"worker.concurrency": "flag --concurrency"}


def write(directory: Path, name: str, text: str) -> Path:
    path = directory / name
    path.write_text(text, encoding="utf-8")
    return path


def problems_of(
    tmp_path: Path,
    environ: dict[str, str] | None = None,
    overrides: dict[str, Any] | None = None,
    config_file: str | None = None,
) -> list[str]:
    with pytest.raises(ConfigError) as excinfo:
        load_settings(
            config_file,
            overrides=overrides,
            override_names=CONCURRENCY_FLAG,
            environ=environ or {},
            cwd=tmp_path,
        )
    assert str(excinfo.value) == "\n".join(excinfo.value.problems)
    return excinfo.value.problems


# --- defaults and precedence -------------------------------------------------------------------


def test_load_settings_without_sources_gives_defaults(tmp_path: Path) -> None:
    loaded = load_settings(environ={}, cwd=tmp_path)

    assert loaded.settings == Settings.model_construct()
    assert loaded.config_file is None
    assert set(loaded.origins) == set(leaf_keys())
    assert set(loaded.origins.values()) == {"default"}


PRECEDENCE = [
    pytest.param(True, False, False, 50, "file looplane.toml:2", id="file-over-default"),
    pytest.param(True, True, False, 30, "env LOOPLANE_WORKER__CONCURRENCY", id="env-over-file"),
    pytest.param(True, True, True, 7, "flag --concurrency", id="flag-over-env-and-file"),
    pytest.param(False, True, False, 30, "env LOOPLANE_WORKER__CONCURRENCY", id="env-only"),
    pytest.param(False, False, True, 7, "flag --concurrency", id="flag-only"),
    pytest.param(True, False, True, 7, "flag --concurrency", id="flag-over-file"),
]


@pytest.mark.parametrize(("in_file", "in_env", "in_flag", "expected", "origin"), PRECEDENCE)
def test_load_settings_precedence_is_flag_env_file_default(
    tmp_path: Path, in_file: bool, in_env: bool, in_flag: bool, expected: int, origin: str
) -> None:
    if in_file:
        write(tmp_path, "looplane.toml", "[worker]\nconcurrency = 50\n")
    environ = {"LOOPLANE_WORKER__CONCURRENCY": "30"} if in_env else {}
    overrides = {"worker.concurrency": 7} if in_flag else {}

    loaded = load_settings(
        overrides=overrides, override_names=CONCURRENCY_FLAG, environ=environ, cwd=tmp_path
    )

    assert loaded.settings.worker.concurrency == expected
    assert loaded.origins["worker.concurrency"] == origin


def test_load_settings_merges_sources_per_key(tmp_path: Path) -> None:
    write(tmp_path, "looplane.toml", '[storage]\nbackend = "lmdb"\npath = "/from/file"\n')
    environ = {"LOOPLANE_STORAGE__LEASE": "1m"}

    loaded = load_settings(overrides={"storage.path": "/from/flag"}, environ=environ, cwd=tmp_path)

    storage = loaded.settings.storage
    assert (storage.backend, storage.path, storage.lease) == ("lmdb", Path("/from/flag"), 60.0)
    assert loaded.origins["storage.backend"] == "file looplane.toml:2"
    assert loaded.origins["storage.path"] == "override"
    assert loaded.origins["storage.lease"] == "env LOOPLANE_STORAGE__LEASE"


def test_pf30_flag_equal_to_default_still_wins_over_file_and_env(tmp_path: Path) -> None:
    """PF-30: https://github.com/pallets/click/issues/1264 (defaults told from passed values)."""
    write(tmp_path, "looplane.toml", "[worker]\nconcurrency = 50\n")

    without_flag = load_settings(environ={}, cwd=tmp_path)
    with_env = load_settings(environ={"LOOPLANE_WORKER__CONCURRENCY": "30"}, cwd=tmp_path)
    with_flag = load_settings(
        overrides={"worker.concurrency": 10},
        override_names=CONCURRENCY_FLAG,
        environ={"LOOPLANE_WORKER__CONCURRENCY": "30"},
        cwd=tmp_path,
    )

    assert without_flag.settings.worker.concurrency == 50
    assert with_env.settings.worker.concurrency == 30
    assert with_flag.settings.worker.concurrency == 10 == Settings().worker.concurrency
    assert with_flag.origins["worker.concurrency"] == "flag --concurrency"


# --- the environment ---------------------------------------------------------------------------


SELECTORS = [
    pytest.param("STORAGE", "memory", "PATH", "/data/q", "storage", "path", id="storage"),
    pytest.param("RESULTS", "memory", "TTL", "5m", "results", "ttl", id="results"),
    pytest.param(
        "SERIALIZER", "mypkg.codec:Codec", "ENCODING", "latin-1", "serializer", "encoding", id="ser"
    ),
]


@pytest.mark.parametrize(("var", "backend", "sub", "raw", "section", "field"), SELECTORS)
def test_load_settings_bare_env_selects_backend_and_combines_with_nested(
    tmp_path: Path, var: str, backend: str, sub: str, raw: str, section: str, field: str
) -> None:
    write(tmp_path, "looplane.toml", f'[{section}]\nbackend = "lmdb"\n')
    environ = {f"LOOPLANE_{var}": backend, f"LOOPLANE_{var}__{sub}": raw}

    loaded = load_settings(environ=environ, cwd=tmp_path)

    settings_section = getattr(loaded.settings, section)
    assert settings_section.backend == backend
    assert getattr(settings_section, field) is not None
    assert loaded.origins[f"{section}.backend"] == f"env LOOPLANE_{var}"
    assert loaded.origins[f"{section}.{field}"] == f"env LOOPLANE_{var}__{sub}"


def test_load_settings_env_section_as_json_object(tmp_path: Path) -> None:
    environ = {"LOOPLANE_STORAGE": '{"backend": "memory", "queue": "high"}'}

    storage = load_settings(environ=environ, cwd=tmp_path).settings.storage

    assert (storage.backend, storage.queue) == ("memory", "high")


def test_load_settings_env_options_as_json_or_nested(tmp_path: Path) -> None:
    environ = {
        "LOOPLANE_STORAGE__OPTIONS": '{"a": 1}',
        "LOOPLANE_RESULTS__OPTIONS__COMPRESS": "yes",
    }

    settings = load_settings(environ=environ, cwd=tmp_path).settings

    assert settings.storage.options == {"a": 1}
    assert settings.results.options == {"compress": "yes"}


def test_load_settings_env_option_merges_with_file_options(tmp_path: Path) -> None:
    write(tmp_path, "looplane.toml", "[storage.options]\na = 1\nb = 2\n")
    environ = {"LOOPLANE_STORAGE__OPTIONS": '{"c": 4}', "LOOPLANE_STORAGE__OPTIONS__B": "3"}

    loaded = load_settings(environ=environ, cwd=tmp_path)

    assert loaded.settings.storage.options == {"a": 1, "b": "3", "c": 4}
    assert loaded.origins["storage.options"] == "env LOOPLANE_STORAGE__OPTIONS__B"


def test_load_settings_empty_env_value_counts_as_unset(tmp_path: Path) -> None:
    write(tmp_path, "looplane.toml", "[worker]\nconcurrency = 50\n")

    loaded = load_settings(environ={"LOOPLANE_WORKER__CONCURRENCY": ""}, cwd=tmp_path)

    assert loaded.settings.worker.concurrency == 50


def test_load_settings_ignores_env_vars_that_are_not_settings(tmp_path: Path) -> None:
    environ = {
        "LOOPLANE_TEST_REDIS_URL": "redis://localhost",
        "LOOPLANE_TEST_LOG": "/tmp/x",
        "LOOPLANE_HOME": "/opt/looplane",
        "PATH": "/usr/bin",
    }

    loaded = load_settings(environ=environ, cwd=tmp_path)

    assert loaded.settings == Settings.model_construct()


ENV_LISTS = [
    pytest.param("high,low", ["high", "low"], id="comma"),
    pytest.param('["high","low"]', ["high", "low"], id="json"),
    pytest.param("", [], id="empty"),
    pytest.param(" high , low ", ["high", "low"], id="spaces"),
    pytest.param("high,", ["high"], id="trailing-comma"),
    pytest.param("single", ["single"], id="one"),
]


@pytest.mark.parametrize(("raw", "expected"), ENV_LISTS)
def test_pf31_env_list_accepts_json_comma_and_empty(
    tmp_path: Path, raw: str, expected: list[str]
) -> None:
    """PF-31: https://github.com/pydantic/pydantic-settings/issues/291 (comma lists)."""
    write(tmp_path, "looplane.toml", 'app = ["from.file"]\n')

    loaded = load_settings(environ={"LOOPLANE_APP": raw}, cwd=tmp_path)

    assert loaded.settings.app == expected
    assert loaded.origins["app"] == "env LOOPLANE_APP"


@pytest.mark.parametrize("raw", ["[", '["a",', "[1, 2"], ids=["bracket", "open-list", "unclosed"])
def test_pf31_env_list_invalid_json_names_variable_and_formats(tmp_path: Path, raw: str) -> None:
    problems = problems_of(tmp_path, environ={"LOOPLANE_APP": raw})

    assert len(problems) == 1
    assert re.match(
        r'^app: expected a JSON list such as \["a", "b"\] or comma-separated names such as a,b '
        r".*\(got '.*', from env LOOPLANE_APP\)$",
        problems[0],
    )


ENV_BOOLS = [
    pytest.param("false", False, id="false"),
    pytest.param("0", False, id="zero"),
    pytest.param("no", False, id="no"),
    pytest.param("False", False, id="False"),
    pytest.param("OFF", False, id="OFF"),
    pytest.param("true", True, id="true"),
    pytest.param("1", True, id="one"),
    pytest.param("YES", True, id="YES"),
]


@pytest.mark.parametrize(("raw", "expected"), ENV_BOOLS)
def test_pf31_env_bool_reads_words_and_digits(tmp_path: Path, raw: str, expected: bool) -> None:
    """PF-31: "false" is never read as True."""
    environ = {"LOOPLANE_RETRY__JITTER": raw}

    assert load_settings(environ=environ, cwd=tmp_path).settings.retry.jitter is expected


def test_pf31_env_bool_maybe_names_variable_and_expected_format(tmp_path: Path) -> None:
    with pytest.raises(
        ConfigError,
        match=re.escape(
            "retry.jitter: expected a boolean: true/false, yes/no, on/off or 1/0 "
            "(got 'maybe', from env LOOPLANE_RETRY__JITTER)"
        ),
    ):
        load_settings(environ={"LOOPLANE_RETRY__JITTER": "maybe"}, cwd=tmp_path)


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        pytest.param(
            "LOOPLANE_WORKER__CONCURENCY",
            "worker.concurency: unknown setting (did you mean worker.concurrency?) "
            "(from env LOOPLANE_WORKER__CONCURENCY)",
            id="nested-typo",
        ),
        pytest.param(
            "LOOPLANE_CONCURRENCY",
            "concurrency: unknown setting (did you mean worker.concurrency?) "
            "(from env LOOPLANE_CONCURRENCY)",
            id="missing-section",
        ),
        pytest.param(
            "LOOPLANE_WROKER__X",
            "wroker.x: unknown setting (from env LOOPLANE_WROKER__X)",
            id="unknown-section",
        ),
    ],
)
def test_load_settings_unknown_env_setting_is_error(
    tmp_path: Path, name: str, expected: str
) -> None:
    assert problems_of(tmp_path, environ={name: "3"}) == [expected]


def test_load_settings_bare_section_without_backend_is_error(tmp_path: Path) -> None:
    problems = problems_of(tmp_path, environ={"LOOPLANE_WORKER": "fast"})

    assert problems == [
        "worker: expected a table of settings (got 'fast', from env LOOPLANE_WORKER)"
    ]


def test_load_settings_env_section_bad_json_masks_secret_section(tmp_path: Path) -> None:
    problems = problems_of(tmp_path, environ={"LOOPLANE_STORAGE": '{"url": "redis://:pw@h"'})

    assert problems == [
        f'storage: expected a table, or in the environment a JSON object such as {{"a": 1}} '
        f"(got {MASK}, from env LOOPLANE_STORAGE)"
    ]


# --- the file ----------------------------------------------------------------------------------


def test_load_settings_reads_file_named_by_config_env(tmp_path: Path) -> None:
    write(tmp_path, "looplane.toml", "[worker]\nconcurrency = 50\n")
    custom = write(tmp_path, "custom.toml", "[worker]\nconcurrency = 5\n")

    loaded = load_settings(environ={"LOOPLANE_CONFIG": "custom.toml"}, cwd=tmp_path)

    assert loaded.settings.worker.concurrency == 5
    assert loaded.config_file == custom
    assert loaded.origins["worker.concurrency"] == "file custom.toml:2"


def test_load_settings_config_argument_beats_config_env(tmp_path: Path) -> None:
    write(tmp_path, "env.toml", "[worker]\nconcurrency = 5\n")
    write(tmp_path, "arg.toml", "[worker]\nconcurrency = 6\n")

    loaded = load_settings("arg.toml", environ={"LOOPLANE_CONFIG": "env.toml"}, cwd=tmp_path)

    assert loaded.settings.worker.concurrency == 6


def test_load_settings_file_outside_cwd_is_named_by_full_path(tmp_path: Path) -> None:
    other = tmp_path / "etc"
    other.mkdir()
    config = write(other, "prod.toml", "[worker]\nconcurrency = 0\n")
    cwd = tmp_path / "work"
    cwd.mkdir()

    problems = problems_of(cwd, config_file=str(config))

    assert problems == [
        f"worker.concurrency: should be greater than 0 (got 0, from file {config}:2)"
    ]


@pytest.mark.parametrize(
    ("config_file", "environ", "expected"),
    [
        pytest.param(
            "nope.toml",
            {},
            "config file nope.toml: not found (from argument config_file)",
            id="argument",
        ),
        pytest.param(
            None,
            {"LOOPLANE_CONFIG": "nope.toml"},
            "config file nope.toml: not found (from env LOOPLANE_CONFIG)",
            id="env",
        ),
    ],
)
def test_load_settings_missing_config_file_is_error(
    tmp_path: Path, config_file: str | None, environ: dict[str, str], expected: str
) -> None:
    assert problems_of(tmp_path, environ=environ, config_file=config_file) == [expected]


def test_load_settings_missing_config_file_named_by_flag(tmp_path: Path) -> None:
    with pytest.raises(
        ConfigError, match=r"^config file x\.toml: not found \(from flag --config\)$"
    ):
        load_settings(
            "x.toml", override_names={"config": "flag --config"}, environ={}, cwd=tmp_path
        )


UNKNOWN_FILE_KEYS = [
    pytest.param(
        "apps = []\n",
        "apps: unknown setting (did you mean app?) (from file looplane.toml:1)",
        id="top-level",
    ),
    pytest.param(
        '[storage]\nbackend = "lmdb"\npth = "/x"\n',
        "storage.pth: unknown setting (did you mean storage.path?) (from file looplane.toml:3)",
        id="in-section",
    ),
    pytest.param(
        "[wroker]\nconcurrency = 4\n",
        "wroker: unknown setting (did you mean worker?) (from file looplane.toml:1)",
        id="misspelt-section",
    ),
    pytest.param(
        "worker.concurency = 4\n",
        "worker.concurency: unknown setting (did you mean worker.concurrency?) "
        "(from file looplane.toml:1)",
        id="dotted-key",
    ),
    pytest.param(
        "[storage.path]\nx = 1\n",
        "storage.path: expected a path (got {'x': 1}, from file looplane.toml:1)",
        id="table-for-scalar",
    ),
]


@pytest.mark.parametrize(("text", "expected"), UNKNOWN_FILE_KEYS)
def test_load_settings_unknown_file_key_names_key_and_line(
    tmp_path: Path, text: str, expected: str
) -> None:
    write(tmp_path, "looplane.toml", text)

    assert problems_of(tmp_path) == [expected]


def test_load_settings_options_accept_any_key(tmp_path: Path) -> None:
    write(tmp_path, "looplane.toml", "[storage.options]\ncompress = true\nlevel = 3\n")

    options = load_settings(environ={}, cwd=tmp_path).settings.storage.options

    assert options == {"compress": True, "level": 3}


def test_load_settings_section_that_is_not_a_table_is_error(tmp_path: Path) -> None:
    write(tmp_path, "looplane.toml", "\nretry = 5\n")

    assert problems_of(tmp_path) == [
        "retry: expected a table of settings (got 5, from file looplane.toml:2)"
    ]


def test_load_settings_file_bare_backend_string_selects_it(tmp_path: Path) -> None:
    write(tmp_path, "looplane.toml", 'storage = "memory"\n')

    loaded = load_settings(environ={}, cwd=tmp_path)

    assert loaded.settings.storage.backend == "memory"
    assert loaded.origins["storage.backend"] == "file looplane.toml:1"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param(
            "[worker]\nconcurrency = \n",
            "config file looplane.toml:2:15: invalid TOML (Invalid value)",
            id="missing-value",
        ),
        pytest.param(
            'app = ["a",\n',
            "config file looplane.toml:1:12: invalid TOML (Invalid value at end of file)",
            id="end-of-file",
        ),
        pytest.param(
            "[worker]\nconcurrency = 1\nconcurrency = 2\n",
            "config file looplane.toml:3:16: invalid TOML (Cannot overwrite a value)",
            id="duplicate-key",
        ),
    ],
)
def test_load_settings_toml_syntax_error_names_file_line_and_column(
    tmp_path: Path, text: str, expected: str
) -> None:
    write(tmp_path, "looplane.toml", text)

    assert problems_of(tmp_path) == [expected]


def test_load_settings_file_that_is_not_utf8_is_error(tmp_path: Path) -> None:
    (tmp_path / "looplane.toml").write_bytes(b"app = ['\xff']\n")

    with pytest.raises(ConfigError, match=r"^config file looplane\.toml: cannot be read \("):
        load_settings(environ={}, cwd=tmp_path)


# --- pyproject.toml ----------------------------------------------------------------------------


PYPROJECT = """\
[project]
name = "myapp"

[tool.looplane]
app = ["myapp.tasks"]

[tool.looplane.worker]
concurrency = 7
"""


def test_load_settings_falls_back_to_pyproject_tool_table(tmp_path: Path) -> None:
    pyproject = write(tmp_path, "pyproject.toml", PYPROJECT)

    loaded = load_settings(environ={}, cwd=tmp_path)

    assert loaded.settings.app == ["myapp.tasks"]
    assert loaded.settings.worker.concurrency == 7
    assert loaded.config_file == pyproject
    assert loaded.origins["app"] == "file pyproject.toml:5"
    assert loaded.origins["worker.concurrency"] == "file pyproject.toml:8"


def test_load_settings_prefers_looplane_toml_over_pyproject(tmp_path: Path) -> None:
    write(tmp_path, "pyproject.toml", PYPROJECT)
    looplane_toml = write(tmp_path, "looplane.toml", "[worker]\nconcurrency = 3\n")

    loaded = load_settings(environ={}, cwd=tmp_path)

    assert loaded.settings.worker.concurrency == 3
    assert loaded.settings.app == []
    assert loaded.config_file == looplane_toml


def test_load_settings_pyproject_problem_names_pyproject_line(tmp_path: Path) -> None:
    write(tmp_path, "pyproject.toml", PYPROJECT + "lease = 1\n")

    assert problems_of(tmp_path) == [
        "worker.lease: unknown setting (did you mean storage.lease?) (from file pyproject.toml:9)"
    ]


@pytest.mark.parametrize(
    "text",
    ['[project]\nname = "x"\n', "not toml [", '[tool.other]\nx = "y"\n', "tool = 1\n"],
    ids=["no-tool-table", "broken", "other-tool", "tool-not-a-table"],
)
def test_load_settings_pyproject_without_looplane_table_means_no_file(
    tmp_path: Path, text: str
) -> None:
    write(tmp_path, "pyproject.toml", text)

    loaded = load_settings(environ={}, cwd=tmp_path)

    assert loaded.config_file is None
    assert loaded.settings == Settings.model_construct()


def test_load_settings_named_pyproject_reads_its_tool_table(tmp_path: Path) -> None:
    sub = tmp_path / "sub"
    sub.mkdir()
    write(sub, "pyproject.toml", PYPROJECT)

    loaded = load_settings("sub/pyproject.toml", environ={}, cwd=tmp_path)

    assert loaded.settings.worker.concurrency == 7
    assert loaded.origins["worker.concurrency"] == "file sub/pyproject.toml:8"


def test_load_settings_pyproject_tool_looplane_not_a_table_is_error(tmp_path: Path) -> None:
    write(tmp_path, "pyproject.toml", "[tool]\nlooplane = 3\n")

    problems = problems_of(tmp_path, config_file="pyproject.toml")

    assert problems == ["config file pyproject.toml: tool.looplane is not a table"]


# --- overrides ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "overrides",
    [
        pytest.param({"storage": "memory", "storage.path": "/q"}, id="bare-and-dotted"),
        pytest.param({"storage": {"backend": "memory", "path": "/q"}}, id="table"),
        pytest.param({"storage__backend": "memory", "storage__path": "/q"}, id="double-underscore"),
    ],
)
def test_load_settings_overrides_accept_dotted_bare_and_table_forms(
    tmp_path: Path, overrides: dict[str, Any]
) -> None:
    storage = load_settings(overrides=overrides, environ={}, cwd=tmp_path).settings.storage

    assert (storage.backend, storage.path) == ("memory", Path("/q"))


def test_load_settings_overrides_keep_path_objects_and_lists(tmp_path: Path) -> None:
    overrides = {"storage.path": tmp_path / "q", "app": ["a.tasks", "b.tasks"]}

    settings = load_settings(overrides=overrides, environ={}, cwd=tmp_path).settings

    assert settings.storage.path == tmp_path / "q"
    assert settings.app == ["a.tasks", "b.tasks"]


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        pytest.param(
            "worker.concurency",
            "worker.concurency: unknown setting (did you mean worker.concurrency?) (from override)",
            id="typo",
        ),
        pytest.param("..", "'..': unknown setting (from override)", id="empty"),
    ],
)
def test_load_settings_unknown_override_is_error(tmp_path: Path, key: str, expected: str) -> None:
    assert problems_of(tmp_path, overrides={key: 1}) == [expected]


# --- validation messages -----------------------------------------------------------------------


BAD_VALUES = [
    pytest.param(
        "worker.concurrency",
        0,
        "worker.concurrency: should be greater than 0 (got 0, {origin})",
        id="concurrency-zero",
    ),
    pytest.param(
        "worker.concurrency",
        "ten",
        "worker.concurrency: expected a whole number (got 'ten', {origin})",
        id="concurrency-word",
    ),
    pytest.param(
        "worker.shutdown_grace",
        "5 minutes",
        "worker.shutdown_grace: expected a duration: a number of seconds, or 250ms, 30s, 5m, "
        "2h, 1d (got '5 minutes', {origin})",
        id="duration-words",
    ),
    pytest.param(
        "retry.base_delay",
        -1,
        "retry.base_delay: expected a duration: a finite number of seconds >= 0 (got -1, {origin})",
        id="duration-negative",
    ),
    pytest.param(
        "storage.lease",
        "0s",
        "storage.lease: should be greater than 0 (got '0s', {origin})",
        id="lease-zero",
    ),
    pytest.param(
        "task.timeout",
        0,
        "task.timeout: should be greater than 0 (got 0, {origin})",
        id="timeout-zero",
    ),
    pytest.param(
        "storage.map_size",
        "1 gigs",
        "storage.map_size: expected a size: a number of bytes, or 512KiB, 64MiB, 1GiB, 1GB "
        "(got '1 gigs', {origin})",
        id="size-unit",
    ),
    pytest.param(
        "retry.backoff",
        "fast",
        "retry.backoff: should be 'none', 'fixed' or 'exponential' (got 'fast', {origin})",
        id="backoff",
    ),
    pytest.param(
        "storage.backend",
        "my pkg/backend",
        "storage.backend: expected a backend alias such as memory or lmdb, or an import path "
        "package.module:ClassName (got 'my pkg/backend', {origin})",
        id="backend-shape",
    ),
    pytest.param(
        "retry.retries",
        -1,
        "retry.retries: should be greater than or equal to 0 (got -1, {origin})",
        id="retries-negative",
    ),
]


@pytest.mark.parametrize(("key", "value", "expected"), BAD_VALUES)
def test_load_settings_bad_value_from_file_names_key_value_and_line(
    tmp_path: Path, key: str, value: Any, expected: str
) -> None:
    section, name = key.split(".")
    write(tmp_path, "looplane.toml", f"# settings\n[{section}]\n{name} = {json.dumps(value)}\n")

    assert problems_of(tmp_path) == [expected.format(origin="from file looplane.toml:3")]


@pytest.mark.parametrize(("key", "value", "expected"), BAD_VALUES)
def test_load_settings_bad_value_from_flag_names_the_flag(
    tmp_path: Path, key: str, value: Any, expected: str
) -> None:
    with pytest.raises(ConfigError) as excinfo:
        load_settings(
            overrides={key: value}, override_names={key: "flag --x"}, environ={}, cwd=tmp_path
        )

    assert excinfo.value.problems == [expected.format(origin="from flag --x")]


def test_load_settings_long_bad_value_is_shortened(tmp_path: Path) -> None:
    environ = {"LOOPLANE_WORKER__CONCURRENCY": "9" * 50 + "x" * 50}

    problems = problems_of(tmp_path, environ=environ)

    assert problems == [
        f"worker.concurrency: expected a whole number (got '{'9' * 50}{'x' * 26}..., "
        "from env LOOPLANE_WORKER__CONCURRENCY)"
    ]


def test_load_settings_bad_options_name_the_expected_format(tmp_path: Path) -> None:
    environ = {"LOOPLANE_SERIALIZER__OPTIONS": "indent=2", "LOOPLANE_RESULTS__OPTIONS": "{x"}

    assert problems_of(tmp_path, environ=environ) == [
        'results.options: expected a table, or in the environment a JSON object such as {"a": 1} '
        f"(got {MASK}, from env LOOPLANE_RESULTS__OPTIONS)",
        "serializer.options: expected a table, or in the environment a JSON object such as "
        "{\"a\": 1} (got 'indent=2', from env LOOPLANE_SERIALIZER__OPTIONS)",
    ]


def test_load_settings_path_value_is_shown_as_text(tmp_path: Path) -> None:
    assert problems_of(tmp_path, overrides={"storage.queue": Path("q")}) == [
        "storage.queue: expected a string (got 'q', from override)"
    ]


def test_load_settings_bad_list_item_names_its_index(tmp_path: Path) -> None:
    write(tmp_path, "looplane.toml", 'app = ["a", 2]\n')

    assert problems_of(tmp_path) == ["app[1]: expected a string (got 2, from file looplane.toml:1)"]


def test_load_settings_reports_every_problem_at_once(tmp_path: Path) -> None:
    write(
        tmp_path,
        "looplane.toml",
        "[worker]\nconcurrency = 0\nshutdown_grace = 'soon'\n\n[retry]\nretry = 3\n",
    )
    environ = {"LOOPLANE_RETRY__JITTER": "maybe", "LOOPLANE_STORAGE__MAP_SIZE": "huge"}

    problems = problems_of(tmp_path, environ=environ, overrides={"task.timeout": "-5"})

    assert [line.split(":", 1)[0] for line in problems] == [
        "retry.retry",
        "storage.map_size",
        "worker.concurrency",
        "worker.shutdown_grace",
        "retry.jitter",
        "task.timeout",
    ]
    assert "from file looplane.toml:6" in problems[0]
    assert "from override" in problems[-1]


# --- durations and sizes -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "seconds"),
    [
        pytest.param("30s", 30.0, id="seconds"),
        pytest.param("5m", 300.0, id="minutes"),
        pytest.param("1.5h", 5400.0, id="hours"),
        pytest.param("250ms", 0.25, id="milliseconds"),
        pytest.param("2d", 172800.0, id="days"),
        pytest.param(" 45 ", 45.0, id="bare-string"),
        pytest.param(".5s", 0.5, id="leading-dot"),
        pytest.param(12, 12, id="int"),
        pytest.param(2.5, 2.5, id="float"),
    ],
)
def test_parse_duration_reads_units_and_numbers(raw: str | float, seconds: float) -> None:
    assert parse_duration(raw) == seconds


@pytest.mark.parametrize(
    "raw", ["5 minutes", "-1s", "1y", "", "s"], ids=["words", "negative", "years", "empty", "unit"]
)
def test_parse_duration_refuses_other_strings(raw: str) -> None:
    with pytest.raises(ValueError, match=r"^expected a duration: a number of seconds"):
        parse_duration(raw)


@pytest.mark.parametrize(
    "raw", [float("nan"), float("inf"), -0.5], ids=["nan", "infinity", "negative"]
)
def test_parse_duration_refuses_non_finite_and_negative_numbers(raw: float) -> None:
    with pytest.raises(ValueError, match=r"^expected a duration: a finite number of seconds >= 0$"):
        parse_duration(raw)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        pytest.param("1h", 3600.0, id="duration"),
        pytest.param("never", None, id="never"),
        pytest.param("none", None, id="none"),
        pytest.param("off", None, id="off"),
    ],
)
def test_load_settings_ttl_reads_duration_or_never(
    tmp_path: Path, raw: str, expected: float | None
) -> None:
    loaded = load_settings(environ={"LOOPLANE_RESULTS__TTL": raw}, cwd=tmp_path)

    assert loaded.settings.results.ttl == expected


@pytest.mark.parametrize(
    ("raw", "size"),
    [
        pytest.param('"1GiB"', 1 << 30, id="GiB"),
        pytest.param('"512MiB"', 512 << 20, id="MiB"),
        pytest.param('"1GB"', 10**9, id="GB"),
        pytest.param('"64 KiB"', 64 << 10, id="space"),
        pytest.param("4096", 4096, id="number"),
    ],
)
def test_load_settings_sizes_read_as_humans_write_them(tmp_path: Path, raw: str, size: int) -> None:
    write(tmp_path, "looplane.toml", f"[storage]\nmap_size = {raw}\n")

    assert load_settings(environ={}, cwd=tmp_path).settings.storage.map_size == size


# --- secrets -----------------------------------------------------------------------------------


SECRET_URL = "redis://looplane:hunter2@cache.internal:6379/0"


def test_to_document_masks_secrets_unless_revealed(tmp_path: Path) -> None:
    environ = {"LOOPLANE_STORAGE__URL": SECRET_URL}
    settings = load_settings(environ=environ, cwd=tmp_path).settings

    masked = to_document(settings)
    revealed = to_document(settings, reveal_secrets=True)

    assert masked["storage"]["url"] == MASK
    assert "hunter2" not in json.dumps(masked)
    assert "hunter2" not in repr(settings)
    assert revealed["storage"]["url"] == SECRET_URL
    assert "url" not in masked["results"]


@pytest.mark.parametrize(
    ("environ", "fragment"),
    [
        pytest.param(
            {"LOOPLANE_STORAGE__URL": SECRET_URL, "LOOPLANE_STORAGE__LEASE": "x"},
            "storage.lease",
            id="other-problem",
        ),
        pytest.param(
            {"LOOPLANE_STORAGE__URLL": SECRET_URL},
            "storage.urll: unknown setting (did you mean storage.url?) "
            "(from env LOOPLANE_STORAGE__URLL)",
            id="misspelt-secret",
        ),
    ],
)
def test_load_settings_errors_never_show_secrets(
    tmp_path: Path, environ: dict[str, str], fragment: str
) -> None:
    problems = problems_of(tmp_path, environ=environ)

    assert fragment in problems[0]
    assert all("hunter2" not in line for line in problems)


def test_load_settings_bad_secret_value_is_masked(tmp_path: Path) -> None:
    write(tmp_path, "looplane.toml", "[results]\nurl = 12345\n")

    assert problems_of(tmp_path) == [
        f"results.url: expected a string (got {MASK}, from file looplane.toml:2)"
    ]


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        pytest.param(SECRET_URL, f"redis://looplane:{MASK}@cache.internal:6379/0", id="password"),
        pytest.param("redis://:pw@host/0", f"redis://:{MASK}@host/0", id="no-user"),
        pytest.param("redis://host:6379/0", "redis://host:6379/0", id="no-password"),
        pytest.param(
            "redis://host/0?password=pw&db=1", f"redis://host/0?password={MASK}&db=1", id="query"
        ),
        pytest.param("hunter2", MASK, id="not-a-url"),
        pytest.param("http://[::1", MASK, id="unparsable"),
    ],
)
def test_redact_url_hides_passwords_only(url: str, expected: str) -> None:
    assert redact_url(url) == expected


# --- documents ---------------------------------------------------------------------------------


def test_to_document_round_trips_through_toml(tmp_path: Path) -> None:
    overrides = {
        "app": ["myapp.tasks", "myapp.reports"],
        "storage": {"backend": "mypkg.store:Store", "url": SECRET_URL, "options": {"a": 1}},
        "storage.path": tmp_path / "q",
        "storage.map_size": "2GiB",
        "results.ttl": "never",
        "results.backend": "memory",
        "retry.backoff": "fixed",
        "retry.jitter": False,
        "task.timeout": "90s",
    }
    original = load_settings(overrides=overrides, environ={}, cwd=tmp_path).settings
    document = to_document(original, reveal_secrets=True)
    write(tmp_path, "out.toml", tomli_w.dumps(document))

    reloaded = load_settings("out.toml", environ={}, cwd=tmp_path).settings

    assert reloaded == original
    assert document["results"]["ttl"] == "never"
    assert reloaded.storage.url == SecretStr(SECRET_URL)


def test_to_document_uses_plain_types_and_omits_none() -> None:
    document = to_document(Settings.model_construct())

    assert document["storage"]["path"] == "/tmp/looplane"
    assert document["storage"]["map_size"] == 1 << 30
    assert document["retry"]["backoff"] == BackoffKind.EXPONENTIAL.value
    assert document["worker"]["shutdown_grace"] == 30.0
    assert document["task"] == {}
    assert "backend" not in document["results"]
    assert json.loads(json.dumps(document)) == document


# --- Settings() and ConfigError ----------------------------------------------------------------


def test_settings_reads_the_same_sources_as_load_settings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Settings() has no environ or cwd argument: it reads the process's, so this one test
    # sets them through monkeypatch, which restores both afterwards.
    write(tmp_path, "looplane.toml", "[worker]\nconcurrency = 50\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("LOOPLANE_STORAGE", "memory")

    settings = Settings.model_validate({"retry": {"retries": 0}})

    assert settings.worker.concurrency == 50
    assert settings.storage.backend == "memory"
    assert settings.retry.retries == 0
    assert settings == load_settings(overrides={"retry.retries": 0}).settings


def test_config_error_joins_problems_one_a_line() -> None:
    error = ConfigError(problems=["a: bad", "b: worse"])

    assert error.problems == ["a: bad", "b: worse"]
    assert str(error) == "a: bad\nb: worse"
    assert ConfigError("plain message").problems == ["plain message"]
    assert isinstance(error, ValueError)


# --- shipped files -----------------------------------------------------------------------------


_COMMENTED_SETTING = re.compile(r"^# (\[[a-z_.]+\]|[a-z_]+ = .+)$")


def _uncommented(text: str) -> str:
    return "\n".join(
        line[2:] if _COMMENTED_SETTING.match(line) else line for line in text.splitlines()
    )


def _leaf_keys_of(document: dict[str, Any]) -> set[str]:
    keys: set[str] = set()
    for name, value in document.items():
        if isinstance(value, dict):
            keys.update(f"{name}.{sub}" for sub in value)
        else:
            keys.add(name)
    return keys


def test_example_file_loads_as_shipped(tmp_path: Path) -> None:
    loaded = load_settings(REPO / "looplane.toml.example", environ={}, cwd=tmp_path)

    assert loaded.settings == Settings.model_construct()


def test_example_file_documents_every_setting_with_its_default(tmp_path: Path) -> None:
    text = _uncommented((REPO / "looplane.toml.example").read_text(encoding="utf-8"))
    write(tmp_path, "looplane.toml", text)

    loaded = load_settings(environ={}, cwd=tmp_path)

    assert _leaf_keys_of(tomllib.loads(text)) == set(leaf_keys())
    assert loaded.settings == Settings.model_construct()
    assert all(origin.startswith("file looplane.toml:") for origin in loaded.origins.values())


@pytest.mark.parametrize(
    ("profile", "backend"),
    [pytest.param("memory", "memory", id="memory"), pytest.param("lmdb", "lmdb", id="lmdb")],
)
def test_profile_loads_and_selects_its_backend(tmp_path: Path, profile: str, backend: str) -> None:
    path = REPO / "config" / f"{profile}.toml"

    loaded = load_settings(path, environ={}, cwd=tmp_path)

    assert loaded.settings.storage.backend == backend
    assert loaded.settings.results.backend == backend
    assert loaded.config_file == path


def test_redis_profile_selects_redis_for_tasks_and_results(tmp_path: Path) -> None:
    path = REPO / "config" / "redis.toml"

    loaded = load_settings(path, environ={}, cwd=tmp_path)

    settings = loaded.settings
    assert (settings.storage.backend, settings.results.backend) == ("redis", "redis")
    assert settings.storage.url is not None
    assert settings.storage.url.get_secret_value() == "redis://127.0.0.1:6379/0"
    assert settings.results.url is None
    assert settings.storage.max_connections == 10
    assert loaded.config_file == path


def test_to_document_masks_secret_looking_options(tmp_path: Path) -> None:
    (tmp_path / "looplane.toml").write_text(
        '[storage]\nbackend = "memory"\noptions = { password = "optSECRET", region = "eu" }\n',
        encoding="utf-8",
    )
    loaded = load_settings(environ={}, cwd=tmp_path)
    document = to_document(loaded.settings)
    assert document["storage"]["options"] == {"password": MASK, "region": "eu"}
    revealed = to_document(loaded.settings, reveal_secrets=True)
    assert revealed["storage"]["options"]["password"] == "optSECRET"


@pytest.mark.parametrize(
    ("file", "environ", "expected"),
    [
        pytest.param("", {}, True, id="default-durable"),
        pytest.param("[storage]\nsync = false\n", {}, False, id="file"),
        pytest.param("", {"LOOPLANE_STORAGE__SYNC": "off"}, False, id="env"),
        pytest.param(
            "[storage]\nsync = false\n", {"LOOPLANE_STORAGE__SYNC": "yes"}, True, id="env-wins"
        ),
    ],
)
def test_load_settings_storage_sync(
    tmp_path: Path, file: str, environ: dict[str, str], expected: bool
) -> None:
    write(tmp_path, "looplane.toml", file)

    assert load_settings(environ=environ, cwd=tmp_path).settings.storage.sync is expected


def test_load_settings_storage_sync_refuses_a_non_boolean(tmp_path: Path) -> None:
    write(tmp_path, "looplane.toml", '[storage]\nsync = "sometimes"\n')

    with pytest.raises(ConfigError, match=r"storage\.sync"):
        load_settings(environ={}, cwd=tmp_path)


def test_storage_sync_is_documented_in_the_settings_model() -> None:
    description = StorageSettings.model_fields["sync"].description

    assert description is not None
    assert "OS crash" in description
