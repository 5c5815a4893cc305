from __future__ import annotations

import os
import re
import subprocess
import sys
from typing import TYPE_CHECKING

import pytest

import looplane
from looplane.cli import app
from looplane.cli.exit_codes import EXIT_CONFIG, EXIT_FAILURE, EXIT_OK, EXIT_TIMEOUT
from tests.cli._process import child_env, looplane_argv

if TYPE_CHECKING:
    from pathlib import Path

    from typer.testing import CliRunner


def test_version_prints_the_package_version(runner: CliRunner) -> None:
    result = runner.invoke(app, ["--version"])

    assert result.exit_code == EXIT_OK
    assert result.stdout == f"looplane {looplane.__version__}\n"


@pytest.mark.parametrize(
    "command",
    [
        pytest.param([], id="root"),
        pytest.param(["worker"], id="worker"),
        pytest.param(["enqueue"], id="enqueue"),
        pytest.param(["config"], id="config"),
        pytest.param(["config", "show"], id="config-show"),
    ],
)
def test_help_is_offered_by_every_command(runner: CliRunner, command: list[str]) -> None:
    result = runner.invoke(app, [*command, "--help"])

    assert result.exit_code == EXIT_OK, result.output
    assert "Usage: looplane" in result.stdout


def test_help_of_the_root_lists_the_commands_and_shell_completion(runner: CliRunner) -> None:
    result = runner.invoke(app, ["--help"])

    for word in ("worker", "enqueue", "config", "--install-completion", "--version"):
        assert word in result.stdout


def test_pf30_help_shows_the_effective_defaults_though_options_default_to_none(
    runner: CliRunner,
) -> None:
    """https://github.com/pallets/click/issues/1264: the defaults come from the settings."""
    text = " ".join(runner.invoke(app, ["worker", "--help"]).stdout.split())

    assert re.search(r"--concurrency .*\[default: \(?10\)?\]", text)
    assert re.search(r"--storage .*\[default: \(?lmdb\)?\]", text)
    assert re.search(r"--db-path .*\[default: \(?/tmp/looplane\)?\]", text)


def test_unknown_option_exits_with_the_config_status(runner: CliRunner) -> None:
    result = runner.invoke(app, ["worker", "--no-such-option"])

    assert result.exit_code == EXIT_CONFIG
    assert "No such option" in result.stderr


def test_exit_codes_are_distinct() -> None:
    codes = [EXIT_OK, EXIT_FAILURE, EXIT_CONFIG, EXIT_TIMEOUT]

    assert len(set(codes)) == len(codes)


@pytest.mark.parametrize(
    "argv",
    [
        pytest.param(looplane_argv(), id="script"),
        pytest.param([sys.executable, "-m", "looplane.cli"], id="python-m"),
    ],
)
def test_command_runs_as_a_real_process(argv: list[str]) -> None:
    done = subprocess.run(
        [*argv, "--version"], capture_output=True, text=True, env=child_env(), timeout=20
    )

    assert done.returncode == EXIT_OK, done.stderr
    assert done.stdout == f"looplane {looplane.__version__}\n"


@pytest.mark.parametrize(
    "missing",
    [
        pytest.param("typer", id="typer"),
        pytest.param("rich", id="rich"),
        pytest.param("tomli_w", id="tomli-w"),
    ],
)
@pytest.mark.parametrize(
    "argv",
    [
        pytest.param(looplane_argv(), id="script"),
        pytest.param([sys.executable, "-m", "looplane.cli"], id="python-m"),
    ],
)
def test_command_without_the_cli_extra_exits_2_naming_it(
    tmp_path: Path, argv: list[str], missing: str
) -> None:
    # A None entry in sys.modules makes every import of the module fail as if it were not
    # installed; sitecustomize sets it before the entry point runs.
    (tmp_path / "sitecustomize.py").write_text(f"import sys\nsys.modules[{missing!r}] = None\n")
    env = child_env()
    env["PYTHONPATH"] = os.pathsep.join([str(tmp_path), env["PYTHONPATH"]])

    done = subprocess.run([*argv, "--version"], capture_output=True, text=True, env=env, timeout=20)

    assert done.returncode == EXIT_CONFIG
    assert done.stdout == ""
    assert done.stderr == (
        f"error: the looplane command needs the cli extra ({missing} is not installed): "
        "pip install 'looplane[cli]'\n"
    )
