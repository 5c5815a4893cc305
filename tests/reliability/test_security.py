"""Security: storage bytes are data, never code, and passwords never reach any output.

Only JSON is read from storage by default: a pickle, or a tagged value naming a class or
module, is refused and dead-lettered without running anything. A task name read from
storage is only looked up in the registry, never imported. A password planted in a URL
setting, given by file or by environment, must not appear on stdout, stderr, in log
records, in exception messages or tracebacks, or in the repr of settings and backends.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import pickle
import signal
import sys
import traceback
import uuid
from typing import TYPE_CHECKING, Any

import pytest
from typer.testing import CliRunner

import looplane
from looplane import LMDBResultBackend, LMDBStorage
from looplane.broker.serializer import JSONSerializer
from looplane.cli import app
from looplane.config import Settings, load_settings, redact_url
from looplane.errors import ConfigError, LooplaneError, SerializationError
from looplane.result import RedisResultBackend
from looplane.storage import InMemoryStorage, RedisStorage
from looplane.storage.base import NewTask
from looplane.task import Task, registry
from tests._rig import Rig, isolated_cli_state
from tests.cli._process import start_looplane
from tests.conftest import REDIS_MARKS, REDIS_URL
from tests.reliability._cluster import drop_queue

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

PW = "s3cr3t-planted-pw"
ECHO = "test.security.ok"

if ECHO not in registry:
    looplane.register_task(name=ECHO)(lambda: "ok")


def _record(task_id: str, **fields: Any) -> bytes:
    record = json.loads(JSONSerializer().serialize(Task(id=task_id, name=ECHO)))
    return json.dumps(dict(record, **fields)).encode()


# JSON only ------------------------------------------------------------------------------


class _Trap:
    """Unpickling this creates the file at `path`: proof that a pickle was run."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, tuple[str, str]]:
        return (open, (self.path, "w"))


def _pickles(marker: Path) -> dict[str, bytes]:
    trap = {"v": 1, "id": "x", "name": ECHO, "args": [_Trap(str(marker))]}
    return {f"pickle-{p}": pickle.dumps(trap, protocol=p) for p in (0, 2, 4, 5)}


def _tagged(task_id: str, marker: Path) -> dict[str, bytes]:
    blob = base64.b64encode(pickle.dumps(_Trap(str(marker)))).decode()
    return {
        f"tag-{tag}": _record(task_id, args=[{"__lp__": tag, "v": value}])
        for tag, value in [
            ("pickle", blob),
            ("os.system", f"touch {marker}"),
            ("builtins.eval", f"open({str(marker)!r}, 'w')"),
            ("subprocess:run", ["touch", str(marker)]),
            ("looplane.task:Task", {"id": "x"}),
        ]
    }


def test_default_serializer_is_json() -> None:
    assert Settings().serializer.backend == "json"
    assert type(looplane.from_config(storage={"backend": "memory"}).serializer) is JSONSerializer


@pytest.mark.parametrize("protocol", [0, 2, 4, 5])
def test_a_pickle_is_refused_and_not_run(protocol: int, tmp_path: Path) -> None:
    marker = tmp_path / "ran"

    with pytest.raises(SerializationError):
        JSONSerializer().deserialize(_pickles(marker)[f"pickle-{protocol}"])

    assert not marker.exists()


@pytest.mark.parametrize(
    "tag", ["pickle", "os.system", "builtins.eval", "subprocess:run", "looplane.task:Task"]
)
def test_a_tag_naming_code_is_refused(tag: str, tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    payload = _tagged("x", marker)[f"tag-{tag}"]

    with pytest.raises(SerializationError, match=rf"^bad tagged value '{tag}': '{tag}'$"):
        JSONSerializer().deserialize(payload)

    assert not marker.exists()


@pytest.fixture
def side_effect_module(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A module on sys.path that creates a marker file when imported."""
    name = f"lq_sidefx_{uuid.uuid4().hex[:10]}"
    marker = tmp_path / "imported"
    (tmp_path / f"{name}.py").write_text(
        f"open({str(marker)!r}, 'w').close()\n\ndef run(*args, **kwargs):\n    return 'ran'\n"
    )
    sys.path.insert(0, str(tmp_path))
    try:
        yield name, marker
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop(name, None)


def _code_names(module: str) -> list[str]:
    return [f"{module}:run", f"{module}.run", module, "os:system", "subprocess.run"]


STORAGES = [
    pytest.param("memory", id="memory"),
    pytest.param("lmdb", id="lmdb"),
    pytest.param("redis", id="redis", marks=REDIS_MARKS),
]


@pytest.mark.parametrize("kind", STORAGES)
async def test_storage_payloads_never_run_code(
    kind: str, tmp_path: Path, side_effect_module: tuple[str, Path]
) -> None:
    module, marker = side_effect_module
    names = _code_names(module)
    payloads = {
        **{f"name-{name}": _record(f"a{i:031x}", name=name) for i, name in enumerate(names)},
        **_pickles(marker),
        **_tagged("t" * 32, marker),
    }
    ids = [f"a{i:031x}" for i in range(len(names))]
    ids += [f"b{i:031x}" for i in range(len(payloads) - len(names))]
    rig = Rig.open(kind, tmp_path, redis_url=REDIS_URL)
    try:
        await rig.storage.enqueue(
            [
                NewTask(task_id, payload, max_attempts=1)
                for task_id, payload in zip(ids, payloads.values(), strict=True)
            ]
        )
        good = await rig.producer.send(ECHO)
        orchestrator = rig.orchestrator(4)
        await orchestrator.start()
        try:
            assert (await rig.outcome(good)).value == "ok"
            results = [await rig.results.wait(task_id) for task_id in ids]
        finally:
            await orchestrator.stop()
        dead = {d.task_id: d.reason for d in await rig.storage.dead_tasks()}
    finally:
        await rig.close()

    assert [r.error for r in results[: len(names)]] == [
        f"unknown task {name!r}: no loaded module registered it" for name in names
    ]
    assert all(
        r.error and r.error.startswith("undecodable payload: ") for r in results[len(names) :]
    )
    assert set(dead) == set(ids)
    assert module not in sys.modules
    assert not marker.exists()


@pytest.mark.slow
@pytest.mark.timeout(60)
async def test_worker_process_never_imports_a_task_name_from_storage(
    tmp_path: Path, side_effect_module: tuple[str, Path]
) -> None:
    module, marker = side_effect_module
    names = _code_names(module)
    db = tmp_path / "db"
    # The worker runs where the module lies, so an import by name would find it.
    worker = start_looplane(
        ["worker", "-A", "tests.cli.app_tasks", "--db-path", str(db)],
        cwd=tmp_path,
        out_dir=tmp_path / "out",
        env={"PYTHONPATH": str(tmp_path)},
    )
    try:
        await asyncio.to_thread(worker.wait_ready)
        async with LMDBStorage(db) as storage, LMDBResultBackend(db) as results:
            ids = [f"a{i:031x}" for i in range(len(names))]
            await storage.enqueue(
                [
                    NewTask(task_id, _record(task_id, name=name), max_attempts=1)
                    for task_id, name in zip(ids, names, strict=True)
                ]
            )
            found = [await results.wait(task_id, timeout=20) for task_id in ids]
    finally:
        worker.signal(signal.SIGINT)
        await asyncio.to_thread(worker.wait_exit)

    assert [r.error for r in found] == [
        f"unknown task {name!r}: no loaded module registered it" for name in names
    ]
    assert not marker.exists()


# Secrets --------------------------------------------------------------------------------

URLS = {
    "password": f"redis://:{PW}@127.0.0.1:6379/15",
    "user-password": f"redis://user:{PW}@127.0.0.1:6379/15",
    "refused": f"redis://:{PW}@127.0.0.1:1/0",
    "no-such-host": f"redis://user:{PW}@no-such-host.invalid:6379/0",
    "bad-port": f"redis://:{PW}@127.0.0.1:99999/0",
    "bad-scheme": f"http://:{PW}@127.0.0.1:6379/0",
    "query": f"redis://127.0.0.1:1/0?password={PW}",
    "percent-encoded": f"redis://:{PW.replace('-', '%2D')}@127.0.0.1:1/0",
    "unescaped-slash": f"redis://:{PW[:6]}/{PW[6:]}@127.0.0.1:1/0",
    "unescaped-hash": f"redis://:{PW[:6]}#{PW[6:]}@127.0.0.1:1/0",
}
"""URL forms: reachable, unreachable, invalid, and passwords that break URL parsing."""


def _planted(text: str) -> list[str]:
    """The lines of `text` that show the planted password or a piece of it."""
    pieces = {PW, PW[:6], PW[6:], PW.replace("-", "%2D")}
    return [line for line in text.splitlines() if any(piece in line for piece in pieces)]


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Path]:
    """No LOOPLANE_* variables and an empty working directory; the registry, sys.path and
    sys.modules are left as they were found (the CLI imports app modules in-process)."""
    with isolated_cli_state(monkeypatch, tmp_path, app_modules=frozenset({APP_MODULE})) as work:
        yield work


APP_MODULE = "tests.cli.app_tasks"
REACHABLE = {"password"}
"""The one URL form the test server accepts (it has no users; user:password is refused)."""


def _settings_env(url: str, where: str, queue: str) -> dict[str, str]:
    """Redis storage (or memory storage and Redis results) at `url`, on a queue of its own."""
    env = {"LOOPLANE_STORAGE__QUEUE": queue}
    if where == "results":
        env |= {
            "LOOPLANE_STORAGE__BACKEND": "memory",
            "LOOPLANE_RESULTS__BACKEND": "redis",
            "LOOPLANE_RESULTS__URL": url,
        }
    else:
        env |= {"LOOPLANE_STORAGE__BACKEND": "redis", "LOOPLANE_STORAGE__URL": url}
    return env


def _as_file(env: dict[str, str], work: Path) -> Path:
    """`env` written as a TOML config file instead."""
    sections: dict[str, list[str]] = {}
    for name, value in env.items():
        section, key = name.removeprefix("LOOPLANE_").lower().split("__")
        sections.setdefault(section, []).append(f"{key} = {json.dumps(value)}")
    path = work / "planted.toml"
    path.write_text("".join(f"[{s}]\n" + "\n".join(lines) + "\n" for s, lines in sections.items()))
    return path


COMMANDS = {
    "config-show": ["config", "show"],
    "config-toml": ["config", "show", "--format", "toml"],
    "config-json": ["config", "show", "--format", "json"],
    "enqueue": ["enqueue", ECHO, "[]", "--wait", "--wait-timeout", "0.2"],
    "inspect-queue": ["inspect", "queue", "--json"],
    "inspect-tasks": ["inspect", "tasks"],
    "inspect-dead": ["inspect", "dead"],
    "inspect-result": ["inspect", "result", "0" * 32],
    "requeue": ["requeue", "--dead"],
    "purge": ["purge", "--yes"],
    "monitor": ["monitor", "-v"],
    "worker-invalid": ["worker", "-v", "-A", APP_MODULE, "-c", "0"],
    "worker": ["worker", "-v", "-A", APP_MODULE],
}
"""Commands that end by themselves (`monitor` prints once off a terminal; `worker` only where
its storage cannot be reached); `worker-invalid` fails validation of another key."""


def _commands(url_name: str, where: str, source: str, *, full: bool) -> list[str]:
    """Which commands to run with `url_name`; unreachable ones cost a second or two each.

    Every run shows the config and fails validation; a URL that does not parse fails every
    command at once. The default run reaches an unreachable server with a few commands.
    """
    if full or url_name in INVALID:
        return [c for c in COMMANDS if not (c == "worker" and url_name in REACHABLE)]
    commands = ["config-show", "config-toml", "config-json", "worker-invalid"]
    if source == "env" and url_name == "refused":
        commands += ["enqueue", "inspect-result"]
        if where == "storage":
            commands += ["inspect-queue", "monitor", "worker"]
    if source == "env" and url_name == "user-password" and where == "storage":
        commands.append("worker")  # the server refuses the user: an authentication error
    return commands


INVALID = {"bad-port", "bad-scheme", "unescaped-slash", "unescaped-hash"}


async def _cli_outputs(where: str, source: str, work: Path, *, full: bool) -> list[str]:
    """Lines showing the password in any CLI output, for every URL form."""
    seen: list[str] = []
    queues = []
    for url_name, url in URLS.items():
        if url_name in REACHABLE and not REDIS_URL:
            continue
        queues.append(f"lqsec-{uuid.uuid4().hex[:8]}")
        env = _settings_env(url, where, queues[-1])
        flags: list[str] = []
        if source == "file":
            flags = ["--config", str(_as_file(env, work))]
            env = {}
        for command in _commands(url_name, where, source, full=full):
            output = await asyncio.to_thread(_invoke, [*COMMANDS[command], *flags], env)
            seen += [f"{url_name} {command}: {line}" for line in _planted(output)]
    if REDIS_URL:
        for queue in queues:
            await drop_queue(queue)
    return seen


@pytest.mark.timeout(120)
@pytest.mark.parametrize("source", ["env", "file"])
@pytest.mark.parametrize("where", ["storage", "results"])
async def test_cli_never_shows_a_planted_password(
    where: str, source: str, clean_env: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)

    seen = await _cli_outputs(where, source, clean_env, full=False)

    records = "\n".join(_rendered(record) for record in caplog.records)
    assert seen + [f"log: {line}" for line in _planted(records)] == []


@pytest.mark.long
@pytest.mark.timeout(900)
@pytest.mark.parametrize("source", ["env", "file"])
@pytest.mark.parametrize("where", ["storage", "results"])
async def test_cli_never_shows_a_planted_password_in_any_command(
    where: str, source: str, clean_env: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)

    seen = await _cli_outputs(where, source, clean_env, full=True)

    records = "\n".join(_rendered(record) for record in caplog.records)
    assert seen + [f"log: {line}" for line in _planted(records)] == []


def _invoke(args: list[str], env: dict[str, str]) -> str:
    """Run the CLI in this process; its stdout, stderr and any escaped traceback."""
    result = CliRunner(env={"COLUMNS": "200"}).invoke(app, args, env=env)
    output = result.stdout + result.stderr
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        output += "".join(traceback.format_exception(result.exception))
    return output


def _rendered(record: logging.LogRecord) -> str:
    text = record.getMessage()
    if record.exc_info and record.exc_info[1] is not None:
        text += "".join(traceback.format_exception(record.exc_info[1]))
    return text


@pytest.mark.slow
@pytest.mark.timeout(90)
@pytest.mark.parametrize(
    "url_name",
    [
        pytest.param("password", id="password", marks=REDIS_MARKS),
        pytest.param("user-password", id="user-password"),
        pytest.param("refused", id="refused"),
        pytest.param("unescaped-hash", id="unescaped-hash"),
    ],
)
async def test_worker_process_never_shows_a_planted_password(url_name: str, tmp_path: Path) -> None:
    queue = f"lqsec-{uuid.uuid4().hex[:8]}"
    url = URLS[url_name]
    env = _settings_env(url, "storage", queue) | {
        "LOOPLANE_RESULTS__BACKEND": "redis",
        "LOOPLANE_RESULTS__URL": url,
    }
    worker = start_looplane(
        ["worker", "-v", "-A", APP_MODULE],
        cwd=tmp_path,
        out_dir=tmp_path / "out",
        env=env,
    )
    try:
        if url_name in REACHABLE:
            await asyncio.to_thread(worker.wait_ready)
            assert "Storage" in worker.stdout()
            worker.signal(signal.SIGINT)
        rc = await asyncio.to_thread(worker.wait_exit)
    finally:
        worker.kill()
        if url_name in REACHABLE:
            await drop_queue(queue)

    assert (rc == 0) is (url_name in REACHABLE), worker.describe()
    assert _planted(worker.stdout() + worker.stderr()) == []
    if url_name in REACHABLE:
        assert redact_url(url) in worker.stdout()


@pytest.mark.parametrize("url_name", sorted(URLS))
async def test_library_errors_and_reprs_never_show_a_planted_password(
    url_name: str, clean_env: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    url = URLS[url_name]
    texts: list[str] = []
    for overrides in (
        {"storage": {"backend": "redis", "url": url}},
        {"storage": {"backend": "memory"}, "results": {"backend": "redis", "url": url}},
        {"storage": {"backend": "redis", "url": url}, "worker": {"concurrency": 0}},
        {"storage": {"backend": "redis", "url": [url]}},
    ):
        texts += _errors(lambda o=overrides: Settings(**o))
        texts += _errors(lambda o=overrides: load_settings(overrides=o))
        texts += await _use_app(overrides)
    for backend in (lambda: RedisStorage(url), lambda: RedisResultBackend(url)):
        texts += await _use_backend(backend)
    records = [_rendered(record) for record in caplog.records]

    assert _planted("\n".join(texts + records)) == []


def _errors(call: Any) -> list[str]:
    try:
        value = call()
    except Exception as exc:  # noqa: BLE001 - every error's text is checked
        return ["".join(traceback.format_exception(exc))]
    return [repr(value), str(value)]


async def _use_app(overrides: dict[str, Any]) -> list[str]:
    try:
        built = looplane.from_config(**overrides)
    except Exception as exc:  # noqa: BLE001 - every error's text is checked
        return ["".join(traceback.format_exception(exc))]
    texts = [repr(built), str(built), repr(built.storage), repr(built.result_backend)]
    try:
        async with built:
            await built.storage.counts()
            await built.result_backend.get("0" * 32)
    except LooplaneError as exc:
        texts.append("".join(traceback.format_exception(exc)))
    return texts


async def _use_backend(make: Any) -> list[str]:
    # Only built and shown: `_use_app` already makes the same classes reach the server.
    try:
        backend = make()
    except ConfigError as exc:
        return ["".join(traceback.format_exception(exc))]
    texts = [repr(backend), str(backend)]
    await backend.close()
    return texts


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        pytest.param(URLS["password"], "redis://:********@127.0.0.1:6379/15", id="password"),
        pytest.param(URLS["user-password"], "redis://user:********@127.0.0.1:6379/15", id="user"),
        pytest.param(URLS["query"], "redis://127.0.0.1:1/0?password=********", id="query"),
        pytest.param(URLS["unescaped-slash"], "redis://********@127.0.0.1:1/0", id="slash"),
        pytest.param(URLS["unescaped-hash"], "redis://********@127.0.0.1:1/0", id="hash"),
    ],
)
def test_redact_url_hides_the_whole_password(url: str, shown: str) -> None:
    """A password with an unescaped '/' or '#' was shown: the URL parser ended the host there."""
    assert redact_url(url) == shown


def test_a_password_that_breaks_url_parsing_is_not_quoted_in_errors() -> None:
    """redis-py's "Port could not be cast to integer value as 's3cr3t'" quoted a piece of it."""
    with pytest.raises(ConfigError) as caught:
        RedisStorage(URLS["unescaped-slash"])

    assert _planted(str(caught.value)) == []
    assert "percent-encode" in str(caught.value)


class PasswordStorage(InMemoryStorage):
    """A third-party storage whose connection error quotes its ``password`` option."""

    def __init__(self, *, password: str) -> None:
        raise ConnectionError(f"login refused for password {password}")


def test_a_secret_looking_option_is_masked_in_constructor_errors(clean_env: Path) -> None:
    """`config show` masked options.password, but a constructor error quoting it did not."""
    with pytest.raises(ConfigError) as caught:
        looplane.from_config(
            storage={"backend": f"{__name__}:PasswordStorage", "options": {"password": PW}}
        )

    assert _planted("".join(traceback.format_exception(caught.value))) == []
    assert "ConnectionError: login refused for password ********" in str(caught.value)
