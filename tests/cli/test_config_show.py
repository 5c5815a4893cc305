from __future__ import annotations

import json
import re
import tomllib
from typing import TYPE_CHECKING

import pytest

from looplane.cli import app
from looplane.cli.exit_codes import EXIT_CONFIG, EXIT_OK

if TYPE_CHECKING:
    from pathlib import Path

    from typer.testing import CliRunner

SECRET = "hunter2"
CONFIG = f"""\
[worker]
concurrency = 50

[storage]
url = "redis://user:{SECRET}@localhost:6379/0"
"""


def _row(stdout: str, key: str) -> list[str]:
    """The value and source cells of `key` in the table (cells are 2+ spaces apart)."""
    for line in stdout.splitlines():
        cells = re.split(r"\s{2,}", line.strip())
        if cells[0] == key:
            return cells[1:]
    raise AssertionError(f"no row for {key!r} in:\n{stdout}")


def test_config_show_table_names_the_source_of_every_value(
    runner: CliRunner, work_dir: Path
) -> None:
    (work_dir / "looplane.toml").write_text(CONFIG)

    result = runner.invoke(
        app,
        ["config", "show", "--db-path", "/srv/queue"],
        env={"LOOPLANE_RETRY__RETRIES": "7"},
    )

    assert result.exit_code == EXIT_OK, result.output
    assert _row(result.stdout, "serializer.backend") == ["json", "default"]
    assert _row(result.stdout, "worker.concurrency") == ["50", "file looplane.toml:2"]
    assert _row(result.stdout, "retry.retries") == ["7", "env LOOPLANE_RETRY__RETRIES"]
    assert _row(result.stdout, "storage.path") == ["/srv/queue", "flag --db-path"]
    assert "looplane.toml" in result.stdout


def test_config_show_table_masks_secrets(runner: CliRunner, work_dir: Path) -> None:
    (work_dir / "looplane.toml").write_text(CONFIG)

    result = runner.invoke(app, ["config", "show"])

    assert result.exit_code == EXIT_OK, result.output
    assert _row(result.stdout, "storage.url") == ["********", "file looplane.toml:5"]
    assert SECRET not in result.output


def test_config_show_worker_flags_override_file_and_env(runner: CliRunner, work_dir: Path) -> None:
    (work_dir / "looplane.toml").write_text(CONFIG)

    result = runner.invoke(
        app,
        ["config", "show", "-c", "10", "--storage", "memory", "-A", "a.tasks", "-A", "b.tasks"],
        env={"LOOPLANE_WORKER__CONCURRENCY": "30"},
    )

    assert result.exit_code == EXIT_OK, result.output
    assert _row(result.stdout, "worker.concurrency") == ["10", "flag --concurrency"]
    assert _row(result.stdout, "storage.backend") == ["memory", "flag --storage"]
    assert _row(result.stdout, "app") == ['["a.tasks", "b.tasks"]', "flag --app"]


def test_config_show_toml_is_the_resolved_config_with_secrets_masked(
    runner: CliRunner, work_dir: Path
) -> None:
    (work_dir / "looplane.toml").write_text(CONFIG)

    result = runner.invoke(
        app, ["config", "show", "--format", "toml"], env={"LOOPLANE_STORAGE": "memory"}
    )

    assert result.exit_code == EXIT_OK, result.output
    document = tomllib.loads(result.stdout)
    assert document["worker"]["concurrency"] == 50
    assert document["storage"]["backend"] == "memory"
    assert document["storage"]["url"] == "********"
    assert SECRET not in result.output


def test_config_show_json_is_the_resolved_config_with_secrets_masked(
    runner: CliRunner, work_dir: Path
) -> None:
    (work_dir / "looplane.toml").write_text(CONFIG)

    result = runner.invoke(
        app,
        ["config", "show", "--format", "json", "--db-path", "/srv/queue"],
        env={"LOOPLANE_STORAGE__URL": f"redis://env:{SECRET}@cache:6379/1"},
    )

    assert result.exit_code == EXIT_OK, result.output
    document = json.loads(result.stdout)
    assert document["worker"]["concurrency"] == 50
    assert document["storage"]["path"] == "/srv/queue"
    assert document["storage"]["url"] == "********"
    assert SECRET not in result.output


def test_config_show_reads_the_file_named_by_config(runner: CliRunner, tmp_path: Path) -> None:
    config = tmp_path / "elsewhere.toml"
    config.write_text("[worker]\nshutdown_grace = '5m'\n")

    result = runner.invoke(app, ["config", "show", "--config", str(config), "--format", "json"])

    assert result.exit_code == EXIT_OK, result.output
    assert json.loads(result.stdout)["worker"]["shutdown_grace"] == 300.0


@pytest.mark.parametrize(
    ("file_text", "args", "env", "expected"),
    [
        pytest.param(
            "[worker]\nconcurrency = 0\n",
            [],
            {},
            r"worker\.concurrency: .*\(got 0, from file looplane\.toml:2\)",
            id="file-value",
        ),
        pytest.param(
            "[worker]\nconcurency = 5\n",
            [],
            {},
            r"worker\.concurency: .*looplane\.toml:2",
            id="file-unknown-key",
        ),
        pytest.param(
            None,
            [],
            {"LOOPLANE_WORKER__CONCURRENCY": "many"},
            r"worker\.concurrency: .*'many'.*env LOOPLANE_WORKER__CONCURRENCY",
            id="env-value",
        ),
        pytest.param(
            None,
            ["-c", "0"],
            {},
            r"worker\.concurrency: .*\(got 0, from flag --concurrency\)",
            id="flag-value",
        ),
        pytest.param(
            None,
            ["--config", "missing.toml"],
            {},
            r"config file missing\.toml: not found \(from flag --config\)",
            id="missing-file",
        ),
    ],
)
def test_config_errors_exit_2_with_one_line_per_problem_and_no_traceback(
    runner: CliRunner,
    work_dir: Path,
    file_text: str | None,
    args: list[str],
    env: dict[str, str],
    expected: str,
) -> None:
    if file_text is not None:
        (work_dir / "looplane.toml").write_text(file_text)

    result = runner.invoke(app, ["config", "show", *args], env=env)

    assert result.exit_code == EXIT_CONFIG
    assert re.search(rf"^error: {expected}", result.stderr, re.MULTILINE), result.stderr
    assert "Traceback" not in result.output
    assert result.stdout == ""


def test_config_errors_are_all_listed_each_on_its_own_line(
    runner: CliRunner, work_dir: Path
) -> None:
    (work_dir / "looplane.toml").write_text("[worker]\nconcurrency = 0\nshutdown_grace = 'soon'\n")

    result = runner.invoke(app, ["config", "show"], env={"LOOPLANE_RETRY__RETRIES": "-1"})

    assert result.exit_code == EXIT_CONFIG
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    keys = sorted(line.split(":")[1].strip() for line in errors)
    assert keys == ["retry.retries", "worker.concurrency", "worker.shutdown_grace"], result.stderr


def test_config_show_refuses_an_unknown_format(runner: CliRunner) -> None:
    result = runner.invoke(app, ["config", "show", "--format", "yaml"])

    assert result.exit_code == EXIT_CONFIG
    assert "yaml" in result.stderr
