"""The README is a contract: every Python snippet in it runs as written, and so do examples."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")
SNIPPETS = re.findall(r"```python\n(.*?)```", README, flags=re.DOTALL)


def run_python(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *args], cwd=cwd, capture_output=True, text=True, timeout=60, check=False
    )


def test_readme_has_snippets() -> None:
    assert len(SNIPPETS) >= 6


@pytest.mark.parametrize(
    "snippet", [pytest.param(s, id=f"snippet-{i}") for i, s in enumerate(SNIPPETS)]
)
def test_readme_snippet_runs(snippet: str, tmp_path: Path) -> None:
    script = tmp_path / "snippet.py"
    script.write_text(snippet, encoding="utf-8")
    done = run_python([str(script)], tmp_path)
    assert done.returncode == 0, done.stderr


def test_readme_quickstart_prints_both_greetings(tmp_path: Path) -> None:
    quickstart = next(s for s in SNIPPETS if "greet" in s)
    script = tmp_path / "quickstart.py"
    script.write_text(quickstart, encoding="utf-8")
    done = run_python([str(script)], tmp_path)
    assert done.returncode == 0, done.stderr
    assert sorted(done.stdout.splitlines()) == ["greet: Hello, Alice!", "greet: Hello, Bob!"]


def test_readme_setup_commands_name_example_and_tests() -> None:
    commands = re.findall(r"```bash\n(python3 -m venv .*?)\n```", README)
    assert "looplane worker -A examples.myapp.tasks" in commands[0]
    assert "examples/myapp/enqueue.py" in commands[0]
    assert commands[1].endswith("-m pytest")


def test_example_lmdb_runs_end_to_end(tmp_path: Path) -> None:
    done = run_python([str(ROOT / "examples" / "example_lmdb.py"), str(tmp_path / "db")], tmp_path)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    flaky = [line for line in lines if line.startswith("flaky_total")]
    assert len(flaky) == 3
    assert "ConnectionError" in flaky[0]
    assert flaky[-1].startswith("flaky_total  attempt 3/4")
    assert any(line.startswith("count_words") for line in lines)
    assert any(line.startswith("sha256_of") for line in lines)


def test_readme_toml_blocks_are_valid_config(tmp_path: Path) -> None:
    from looplane.config import load_settings

    blocks = re.findall(r"```toml\n(.*?)```", README, flags=re.DOTALL)
    assert blocks
    for block in blocks:
        path = tmp_path / "looplane.toml"
        path.write_text(block, encoding="utf-8")
        loaded = load_settings(path, environ={}, cwd=tmp_path)
        assert loaded.config_file == path
