"""The factory: backends by alias and import path, the wired app, app modules, from_config."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import textwrap
import uuid
from typing import TYPE_CHECKING, Any, cast

import pytest

import looplane
from looplane import (
    AppImportError,
    Backoff,
    BackoffKind,
    BrokerError,
    ConfigError,
    InMemoryResultBackend,
    InMemoryStorage,
    JSONSerializer,
    LMDBResultBackend,
    LMDBStorage,
    register_task,
)
from looplane._lmdb_env import LMDBEnv
from looplane.config import Settings
from looplane.factory import (
    App,
    build,
    build_result_backend,
    build_serializer,
    build_storage,
    from_config,
    import_app_modules,
)
from looplane.task import registry
from tests.conftest import eventually
from tests.plugins.custom_backends import CountingSerializer, TaggedResults, TaggedStorage

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterator
    from pathlib import Path

    from looplane import ResultBackend

PLUGINS = "tests.plugins.custom_backends"
APP_TASKS = "tests.plugins.app_tasks"

_started: dict[str, asyncio.Event] = {}


@register_task(name="factory.add")
async def add(a: int, b: int) -> int:
    return a + b


@register_task(name="factory.block")
async def block(tag: str) -> None:
    _started[tag].set()
    await asyncio.Event().wait()


@pytest.fixture(autouse=True)
def _isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    """No LOOPLANE_* variable or config file of the host leaks in; sys.path is restored."""
    for name in list(os.environ):
        if name.startswith("LOOPLANE_"):
            monkeypatch.delenv(name)
    work = tmp_path / "cwd"
    work.mkdir()
    monkeypatch.chdir(work)
    monkeypatch.setattr(sys, "path", list(sys.path))
    before = {entry.name for entry in registry}
    yield
    for entry in list(registry):
        if entry.name not in before:
            registry.remove(entry.name)
            # Unload its module too, so the next import registers the task again.
            sys.modules.pop(entry.module, None)


def make_settings(tmp_path: Path, **sections: Any) -> Settings:
    """Settings with the LMDB directory under `tmp_path` unless a section sets its own."""
    storage = {"path": str(tmp_path / "db"), **sections.pop("storage", {})}
    return Settings.model_validate({"storage": storage, **sections})


def assign(settings: Settings, key: str, value: object) -> Settings:
    """Change a validated setting, as code may, so that only the factory's checks apply."""
    section, field = key.split(".")
    setattr(getattr(settings, section), field, value)
    return settings


@pytest.fixture
async def opened() -> AsyncIterator[list[Any]]:
    """Backends and apps appended here are closed at teardown."""
    things: list[Any] = []
    yield things
    for thing in reversed(things):
        await thing.close()


def real(path: Path) -> str:
    return os.path.realpath(path)


def lmdb_is_open(path: Path) -> bool:
    return real(path) in LMDBEnv._open


@pytest.fixture
def write_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[WritePackage]:
    """Writes modules of a fresh package on sys.path; they are unloaded at teardown."""
    root = tmp_path / "src"
    root.mkdir()
    monkeypatch.syspath_prepend(str(root))
    package = f"pkg_{uuid.uuid4().hex[:8]}"
    writer = WritePackage(root, package)
    yield writer
    for name in [m for m in sys.modules if m == package or m.startswith(package + ".")]:
        del sys.modules[name]


class WritePackage:
    def __init__(self, root: Path, package: str) -> None:
        self.root = root
        self.package = package
        (root / package).mkdir()
        (root / package / "__init__.py").write_text("")

    def __call__(self, module: str, source: str) -> str:
        """Write ``<package>/<module>.py`` and return its dotted name."""
        (self.root / self.package / f"{module}.py").write_text(textwrap.dedent(source))
        return f"{self.package}.{module}"


# Aliases --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "alias", [pytest.param("memory", id="memory"), pytest.param("Memory", id="case")]
)
async def test_build_storage_memory_alias_uses_the_lease(
    tmp_path: Path, alias: str, opened: list[Any]
) -> None:
    storage = build_storage(make_settings(tmp_path, storage={"backend": alias, "lease": "45s"}))
    opened.append(storage)

    assert type(storage) is InMemoryStorage
    assert storage.default_lease_s == 45.0


async def test_build_storage_lmdb_alias_uses_path_lease_map_size_and_readers(
    tmp_path: Path, opened: list[Any]
) -> None:
    settings = make_settings(
        tmp_path,
        storage={"backend": "lmdb", "lease": "1m", "map_size": "64MiB", "max_readers": 200},
    )

    storage = build_storage(settings)
    opened.append(storage)

    assert isinstance(storage, LMDBStorage)
    assert storage.path == str(tmp_path / "db")
    assert (storage.default_lease_s, storage.map_size, storage.max_readers) == (60.0, 1 << 26, 200)
    assert storage.env.env.info()["max_readers"] == 200


async def test_build_result_backend_memory_follows_memory_storage(
    tmp_path: Path, opened: list[Any]
) -> None:
    settings = make_settings(tmp_path, storage={"backend": "memory"}, results={"ttl": "2h"})
    storage = build_storage(settings)
    results = build_result_backend(settings, storage)
    opened += [storage, results]

    assert type(results) is InMemoryResultBackend
    assert results.ttl_s == 7200.0


async def test_build_result_backend_lmdb_shares_the_storage_environment(
    tmp_path: Path, opened: list[Any]
) -> None:
    settings = make_settings(tmp_path, storage={"backend": "lmdb"}, results={"ttl": "never"})
    storage = build_storage(settings)
    results = build_result_backend(settings, storage)
    opened += [storage, results]

    assert isinstance(results, LMDBResultBackend)
    assert results.path == real(tmp_path / "db")
    assert results.ttl_s is None
    assert results.write_channel is storage.write_channel


async def test_build_result_backend_results_path_overrides_the_storage_path(
    tmp_path: Path, opened: list[Any]
) -> None:
    settings = make_settings(tmp_path, results={"path": str(tmp_path / "results")})
    storage = build_storage(settings)
    results = build_result_backend(settings, storage)
    opened += [storage, results]

    assert isinstance(results, LMDBResultBackend)
    assert results.path == real(tmp_path / "results")
    assert results.write_channel is not storage.write_channel


async def test_build_result_backend_lmdb_beside_memory_storage_uses_storage_path(
    tmp_path: Path, opened: list[Any]
) -> None:
    settings = make_settings(tmp_path, storage={"backend": "memory"}, results={"backend": "lmdb"})
    storage = build_storage(settings)
    results = build_result_backend(settings, storage)
    opened += [storage, results]

    assert isinstance(results, LMDBResultBackend)
    assert results.path == real(tmp_path / "db")


def test_build_serializer_json_alias_uses_the_encoding(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, serializer={"backend": "JSON", "encoding": "utf-16"})

    serializer = build_serializer(settings)

    assert isinstance(serializer, JSONSerializer)
    assert serializer.encoding == "utf-16"


async def test_build_wires_every_setting(tmp_path: Path, opened: list[Any]) -> None:
    settings = make_settings(
        tmp_path,
        storage={"backend": "memory", "queue": "reports"},
        serializer={"max_payload": "1KiB"},
        worker={"concurrency": 3, "shutdown_grace": "7s"},
        retry={"retries": 5, "backoff": "fixed", "base_delay": "2s", "max_delay": "1m"},
        task={"timeout": "90s"},
    )

    app = build(settings)
    opened.append(app)

    producer, orchestrator = app.producer, app.orchestrator
    assert (producer.retries, producer.timeout, producer.max_payload_bytes) == (5, 90.0, 1024)
    assert producer.backoff == Backoff(BackoffKind.FIXED, base_s=2.0, max_s=60.0, jitter=True)
    assert producer.queue == app.consumer.queue == "reports"
    assert producer.serializer is app.consumer.serializer is app.serializer
    assert producer.storage is app.consumer.storage is app.storage
    assert (orchestrator.max_concurrent_tasks, orchestrator.grace_s) == (3, 7.0)
    assert orchestrator.consumer is app.consumer
    assert orchestrator.result_backend is app.result_backend
    assert app.settings is settings


# Third-party backends -------------------------------------------------------------------------


async def test_build_constructs_third_party_backends_with_their_options(
    tmp_path: Path, opened: list[Any]
) -> None:
    settings = make_settings(
        tmp_path,
        storage={
            "backend": f"{PLUGINS}:TaggedStorage",
            "options": {"tag": "blue"},
            "url": "tagged://user:hunter2@host/0",
        },
        results={"backend": f"{PLUGINS}:TaggedResults", "options": {"label": "kept"}},
        serializer={"backend": f"{PLUGINS}:CountingSerializer", "options": {"start": 10}},
    )

    app = build(settings)
    opened.append(app)
    await app.producer.send("factory.add", 1, 2)

    assert isinstance(app.storage, TaggedStorage)
    assert (app.storage.tag, app.storage.url) == ("blue", "tagged://user:hunter2@host/0")
    assert isinstance(app.result_backend, TaggedResults)
    assert app.result_backend.label == "kept"
    assert isinstance(app.serializer, CountingSerializer)
    assert app.serializer.encoded == 11


async def test_build_result_backend_defaults_to_memory_for_third_party_storage(
    tmp_path: Path, opened: list[Any]
) -> None:
    settings = make_settings(
        tmp_path, storage={"backend": f"{PLUGINS}:TaggedStorage", "options": {"tag": "x"}}
    )

    app = build(settings)
    opened.append(app)

    assert type(app.result_backend) is InMemoryResultBackend


# Error paths ----------------------------------------------------------------------------------


BACKEND_ERRORS = [
    pytest.param(
        "storage",
        "lmbd",
        r"^storage\.backend: unknown backend; use one of memory, lmdb, redis, or an "
        r"import path package\.module:Class \(got 'lmbd'\)$",
        id="unknown-alias",
    ),
    pytest.param(
        "storage",
        "pkg.mod:",
        r"^storage\.backend: is not an import path of the form "
        r"package\.module:ClassName \(got 'pkg\.mod:'\)$",
        id="malformed-path",
    ),
    pytest.param(
        "storage",
        "tests.plugins.nope:Storage",
        r"^storage\.backend: cannot import 'tests\.plugins\.nope': module not found \(No module "
        r"named 'tests\.plugins\.nope'\) \(got 'tests\.plugins\.nope:Storage'\)$",
        id="module-not-found",
    ),
    pytest.param(
        "storage",
        f"{PLUGINS}:Missing",
        rf"^storage\.backend: '{PLUGINS}' has no attribute 'Missing' \(got ",
        id="no-such-attribute",
    ),
    pytest.param(
        "storage",
        f"{PLUGINS}:NOT_A_CLASS",
        r"^storage\.backend: is a int, not a class subclassing StorageBackend \(got ",
        id="not-a-class",
    ),
    pytest.param(
        "storage",
        f"{PLUGINS}:NotABackend",
        r"^storage\.backend: class NotABackend is not a subclass of StorageBackend \(got ",
        id="not-a-subclass",
    ),
    pytest.param(
        "storage",
        f"{PLUGINS}:TaggedResults",
        r"^storage\.backend: class TaggedResults is not a subclass of StorageBackend",
        id="wrong-base",
    ),
    pytest.param(
        "storage",
        f"{PLUGINS}:HalfStorage",
        r"^storage\.backend: class HalfStorage is abstract; it does not implement: ack, bury, "
        r"claim, counts, dead_tasks, enqueue, purge, purge_dead, release, renew, requeue_dead, "
        r"tasks, watch \(got ",
        id="abstract",
    ),
    pytest.param(
        "results",
        f"{PLUGINS}:TaggedStorage",
        r"^results\.backend: class TaggedStorage is not a subclass of ResultBackend \(got ",
        id="results-not-a-subclass",
    ),
    pytest.param(
        "results",
        "postgres",
        r"^results\.backend: unknown backend; use one of memory, lmdb, redis, or an ",
        id="results-unknown-alias",
    ),
    pytest.param(
        "serializer",
        f"{PLUGINS}:TaggedStorage",
        r"^serializer\.backend: class TaggedStorage is not a subclass of Serializer \(got ",
        id="serializer-not-a-subclass",
    ),
    pytest.param(
        "serializer",
        "msgpack",
        r"^serializer\.backend: unknown backend; use one of json, or",
        id="serializer-unknown-alias",
    ),
]


@pytest.mark.parametrize(("section", "backend", "match"), BACKEND_ERRORS)
def test_build_names_the_setting_when_a_backend_cannot_be_loaded(
    tmp_path: Path, section: str, backend: str, match: str
) -> None:
    settings = assign(make_settings(tmp_path), f"{section}.backend", backend)

    with pytest.raises(ConfigError, match=match) as caught:
        build(settings)

    assert caught.value.problems == [str(caught.value)]
    assert not (tmp_path / "db").exists(), "nothing may be opened before every class is checked"


IMPORT_FAILURES = [
    pytest.param(
        "import not_installed_pkg_xyz\n",
        r"an import inside it failed: ModuleNotFoundError: No module named 'not_installed_pkg_xyz'",
        ModuleNotFoundError,
        id="missing-dependency",
    ),
    pytest.param(
        "raise RuntimeError('no config')\n",
        r"it raised RuntimeError: no config while being imported",
        RuntimeError,
        id="raises",
    ),
]


@pytest.mark.parametrize(("source", "reason", "cause"), IMPORT_FAILURES)
def test_build_storage_names_a_failure_inside_the_backend_module(
    tmp_path: Path, write_package: WritePackage, source: str, reason: str, cause: type
) -> None:
    module = write_package("backend", source)
    settings = make_settings(tmp_path, storage={"backend": f"{module}:Storage"})

    with pytest.raises(
        ConfigError, match=rf"^storage\.backend: cannot import '{module}': {reason}"
    ) as caught:
        build_storage(settings)

    assert isinstance(caught.value.__cause__, cause)


CONSTRUCTOR_ERRORS = [
    pytest.param(
        {"colour": "red", "tag": "x"},
        r"^storage\.backend: rejected its options \(given: colour, tag\): "
        r".*unexpected keyword argument 'colour' \(got 'tests\.plugins\.custom_backends:"
        r"TaggedStorage'\)$",
        id="unknown-option",
    ),
    pytest.param(
        {},
        r"^storage\.backend: rejected its options \(given: none\): .*missing 1 required "
        r"keyword-only argument: 'tag'",
        id="missing-option",
    ),
]


@pytest.mark.parametrize(("options", "match"), CONSTRUCTOR_ERRORS)
def test_build_storage_reports_options_the_constructor_rejects(
    tmp_path: Path, options: dict[str, Any], match: str
) -> None:
    settings = make_settings(
        tmp_path, storage={"backend": f"{PLUGINS}:TaggedStorage", "options": options}
    )

    with pytest.raises(ConfigError, match=match) as caught:
        build_storage(settings)

    assert isinstance(caught.value.__cause__, TypeError)


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        pytest.param(
            "redis://u:hunter2@h:6379/0", r"redis://u:\*\*\*\*\*\*\*\*@h:6379/0", id="password"
        ),
        pytest.param("redis://u:hunter2@[h:6379", r"\*\*\*\*\*\*\*\*", id="unparsable"),
    ],
)
def test_build_storage_masks_the_url_secret_in_a_constructor_failure(
    tmp_path: Path, url: str, shown: str
) -> None:
    settings = make_settings(
        tmp_path, storage={"backend": f"{PLUGINS}:ConnectingStorage", "url": url}
    )

    with pytest.raises(
        ConfigError,
        match=rf"^storage\.backend: could not be constructed: ConnectionError: cannot connect to "
        rf"{shown} \(got 'tests\.plugins\.custom_backends:ConnectingStorage'\)$",
    ) as caught:
        build_storage(settings)

    assert "hunter2" not in str(caught.value)
    assert caught.value.__cause__ is None
    assert caught.value.__suppress_context__


def test_build_storage_keeps_the_cause_when_the_url_holds_no_secret(tmp_path: Path) -> None:
    settings = make_settings(
        tmp_path, storage={"backend": f"{PLUGINS}:ConnectingStorage", "url": "redis://h:6379/0"}
    )

    with pytest.raises(ConfigError, match=r"cannot connect to redis://h:6379/0 \(got ") as caught:
        build_storage(settings)

    assert isinstance(caught.value.__cause__, ConnectionError)


def test_build_storage_refuses_a_url_set_twice(tmp_path: Path) -> None:
    storage = {
        "backend": f"{PLUGINS}:TaggedStorage",
        "url": "tagged://a",
        "options": {"tag": "x", "url": "tagged://b"},
    }

    with pytest.raises(
        ConfigError,
        match=r"^storage\.options: 'url' is set twice, as storage\.url and in storage\.options "
        r"\(got \['tag', 'url'\]\)$",
    ):
        build_storage(make_settings(tmp_path, storage=storage))


@pytest.mark.parametrize("section", ["storage", "results", "serializer"])
def test_build_refuses_options_for_a_built_in_backend(tmp_path: Path, section: str) -> None:
    backend = {"storage": "memory", "results": "memory", "serializer": "json"}[section]
    settings = make_settings(tmp_path, **{section: {"backend": backend, "options": {"x": 1}}})

    with pytest.raises(
        ConfigError,
        match=rf"^{section}\.options: the built-in '{backend}' backend takes no options; use "
        rf"{section}\.<key> settings \(got \['x'\]\)$",
    ):
        build(settings)


def test_build_storage_names_the_path_when_lmdb_cannot_open(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    settings = make_settings(tmp_path, storage={"path": str(blocker / "db")})

    with pytest.raises(
        ConfigError, match=rf"^storage\.path: cannot open LMDB there: .* \(got '{blocker}/db'\)$"
    ):
        build_storage(settings)


def test_build_names_the_results_path_when_lmdb_cannot_open(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    settings = make_settings(tmp_path, results={"path": str(blocker / "r")})

    with pytest.raises(ConfigError, match=r"^results\.path: cannot open LMDB there: "):
        build(settings)

    assert not lmdb_is_open(tmp_path / "db"), "the storage opened first must be closed again"


@pytest.mark.parametrize(
    ("backend", "key", "value", "match"),
    [
        pytest.param(
            "memory",
            "results.ttl",
            0.0,
            r"^results\.ttl: result ttl_s must be a positive number of seconds.* \(got 0\.0\)$",
            id="memory-ttl",
        ),
        pytest.param(
            "lmdb",
            "results.ttl",
            -5.0,
            r"^results\.ttl: result ttl_s must be a positive number of seconds.* \(got -5\.0\)$",
            id="lmdb-ttl",
        ),
        pytest.param(
            "memory",
            "task.timeout",
            0.0,
            r"^task\.timeout: timeout must be a number of seconds > 0, got 0\.0 \(got 0\.0\)$",
            id="timeout",
        ),
        pytest.param(
            "memory",
            "serializer.encoding",
            "klingon",
            r"^serializer\.encoding: unknown text encoding 'klingon' \(got 'klingon'\)$",
            id="encoding",
        ),
        pytest.param(
            "memory",
            "worker.concurrency",
            0,
            r"^worker\.concurrency: max_concurrent_tasks must be >= 1, got 0 \(got 0\)$",
            id="concurrency",
        ),
    ],
)
def test_build_names_the_setting_a_component_refuses(
    tmp_path: Path, backend: str, key: str, value: object, match: str
) -> None:
    settings = assign(make_settings(tmp_path, storage={"backend": backend}), key, value)

    with pytest.raises(ConfigError, match=match) as caught:
        build(settings)

    assert not lmdb_is_open(tmp_path / "db"), "a failed build leaves nothing open"

    assert isinstance(caught.value.__cause__, ConfigError)


def test_build_error_names_where_the_value_came_from(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, storage={"backend": "lmbd"})

    with pytest.raises(ConfigError, match=r"\(got 'lmbd', from env LOOPLANE_STORAGE\)$"):
        build(settings, origins={"storage.backend": "env LOOPLANE_STORAGE"})


async def test_build_closes_the_storage_when_a_later_step_fails(tmp_path: Path) -> None:
    settings = make_settings(
        tmp_path, results={"backend": f"{PLUGINS}:TaggedResults", "options": {"bad": 1}}
    )

    with pytest.raises(ConfigError, match=r"^results\.backend: rejected its options"):
        build(settings)

    assert not lmdb_is_open(tmp_path / "db")


def test_build_logs_a_cleanup_failure_and_raises_the_build_error(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    settings = make_settings(
        tmp_path,
        storage={"backend": f"{PLUGINS}:BrittleStorage", "options": {"tag": "x"}},
        results={"backend": f"{PLUGINS}:TaggedResults", "options": {"bad": 1}},
    )
    caplog.set_level("DEBUG", logger="looplane.factory")

    with pytest.raises(ConfigError, match=r"^results\.backend: rejected its options"):
        build(settings)

    [record] = [r for r in caplog.records if r.name == "looplane.factory"]
    assert record.getMessage() == "closing after a failed build failed"
    assert record.exc_info is not None
    assert isinstance(record.exc_info[1], OSError)


# The app --------------------------------------------------------------------------------------


async def test_app_close_is_idempotent_and_closes_each_backend_once(tmp_path: Path) -> None:
    settings = make_settings(
        tmp_path, storage={"backend": f"{PLUGINS}:TaggedStorage", "options": {"tag": "x"}}
    )
    app = build(settings)
    assert isinstance(app.storage, TaggedStorage)

    await asyncio.gather(app.close(), app.close())
    await app.close()

    assert app.closed
    assert app.storage.close_calls == 1
    with pytest.raises(BrokerError, match=r"^producer is closed$"):
        await app.producer.send("factory.add", 1, 2)


async def test_app_close_closes_a_backend_serving_as_storage_and_results_once(
    tmp_path: Path,
) -> None:
    built = build(make_settings(tmp_path, storage={"backend": "memory"}))
    both = TaggedStorage(tag="both")
    app = App(
        built.settings,
        storage=both,
        result_backend=cast("ResultBackend", both),
        serializer=built.serializer,
        producer=built.producer,
        consumer=built.consumer,
        orchestrator=built.orchestrator,
    )

    await app.close()
    await built.close()

    assert both.close_calls == 1


async def test_app_context_releases_the_shared_lmdb_environment(tmp_path: Path) -> None:
    async with build(make_settings(tmp_path)) as app:
        assert lmdb_is_open(tmp_path / "db")
        await app.producer.send("factory.add", 1, 2)

    assert not lmdb_is_open(tmp_path / "db")
    async with LMDBStorage(tmp_path / "db") as storage:
        assert (await storage.counts()).ready == 1


async def test_app_close_stops_a_running_orchestrator(tmp_path: Path) -> None:
    app = build(make_settings(tmp_path, storage={"backend": "memory"}))
    await app.orchestrator.start()

    await app.close()

    assert not app.orchestrator.is_running


async def test_run_worker_refuses_a_closed_app(tmp_path: Path) -> None:
    app = build(make_settings(tmp_path, storage={"backend": "memory"}))
    await app.close()

    with pytest.raises(BrokerError, match=r"^app is closed; build a new one to run a worker$"):
        await app.run_worker(asyncio.Event())


@pytest.mark.parametrize(
    ("backend", "force"),
    [
        pytest.param("memory", None, id="memory"),
        pytest.param("lmdb", None, id="lmdb"),
        pytest.param("memory", asyncio.Event, id="memory-unused-force"),
    ],
)
async def test_run_worker_runs_tasks_until_stop_is_set(
    tmp_path: Path, backend: str, force: type[asyncio.Event] | None
) -> None:
    stop = asyncio.Event()
    async with build(make_settings(tmp_path, storage={"backend": backend})) as app:
        worker = asyncio.create_task(app.run_worker(stop, force() if force else None))
        task = await app.producer.send(add, 20, 22)
        result = await app.result_backend.wait(task.id, timeout=10)

        stop.set()
        await asyncio.wait_for(worker, 10)

        assert (result.success, result.value) == (True, 42)
        assert not app.orchestrator.is_running


async def test_run_worker_runs_once_per_app(tmp_path: Path) -> None:
    stop = asyncio.Event()
    stop.set()
    async with build(make_settings(tmp_path, storage={"backend": "memory"})) as app:
        await app.run_worker(stop)

        with pytest.raises(BrokerError, match=r"^run_worker runs once per app; build a new one"):
            await app.run_worker(stop)


async def start_blocking_task(app: App) -> None:
    tag = uuid.uuid4().hex
    _started[tag] = asyncio.Event()
    await app.producer.send(block, tag)
    await asyncio.wait_for(_started[tag].wait(), 10)


async def test_run_worker_force_cuts_the_grace_period_short(tmp_path: Path) -> None:
    stop, force = asyncio.Event(), asyncio.Event()
    settings = make_settings(
        tmp_path, storage={"backend": "memory"}, worker={"shutdown_grace": 600}
    )
    async with build(settings) as app:
        worker = asyncio.create_task(app.run_worker(stop, force))
        await start_blocking_task(app)

        stop.set()
        await eventually(lambda: not app.orchestrator.is_running)  # the graceful stop began
        assert not worker.done()
        force.set()
        await asyncio.wait_for(worker, 10)

        counts = await app.storage.counts()
        assert (counts.ready, counts.leased) == (1, 0), "the interrupted task goes back"


async def test_run_worker_with_force_already_set_stops_at_once(tmp_path: Path) -> None:
    stop, force = asyncio.Event(), asyncio.Event()
    settings = make_settings(
        tmp_path, storage={"backend": "memory"}, worker={"shutdown_grace": 600}
    )
    async with build(settings) as app:
        worker = asyncio.create_task(app.run_worker(stop, force))
        await start_blocking_task(app)

        force.set()
        await asyncio.wait_for(worker, 10)

        assert (await app.storage.counts()).ready == 1


async def test_run_worker_cancelled_stops_at_once_and_reraises(tmp_path: Path) -> None:
    settings = make_settings(
        tmp_path, storage={"backend": "memory"}, worker={"shutdown_grace": 600}
    )
    async with build(settings) as app:
        worker = asyncio.create_task(app.run_worker(asyncio.Event()))
        await start_blocking_task(app)

        worker.cancel()
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(worker, 10)

        assert not app.orchestrator.is_running
        assert (await app.storage.counts()).ready == 1


CHILD = """
import asyncio, json, sys
from looplane import LMDBResultBackend, LMDBStorage, StorageProducer

async def main(path):
    async with LMDBStorage(path) as storage, LMDBResultBackend(path) as results:
        task = await StorageProducer(storage).send("factory.add", 3, 4)
        result = await results.wait(task.id, timeout=20)
        print(json.dumps([task.id, result.value]))

asyncio.run(main(sys.argv[1]))
"""


async def test_lmdb_queue_and_results_are_shared_with_another_process(tmp_path: Path) -> None:
    stop = asyncio.Event()
    path = tmp_path / "db"
    async with build(make_settings(tmp_path, storage={"backend": "lmdb"})) as app:
        worker = asyncio.create_task(app.run_worker(stop))
        child = await asyncio.create_subprocess_exec(
            sys.executable, "-c", CHILD, str(path), stdout=asyncio.subprocess.PIPE
        )
        out, _ = await asyncio.wait_for(child.communicate(), 25)
        stop.set()
        await worker

        assert child.returncode == 0
        task_id, value = json.loads(out)
        assert value == 7
        stored = await app.result_backend.get(task_id)
        assert stored is not None
        assert stored.value == 7


# App modules ----------------------------------------------------------------------------------


def test_import_app_modules_returns_the_tasks_each_module_registered(
    write_package: WritePackage,
) -> None:
    tasks = write_package(
        "tasks",
        """
        from looplane import register_task

        @register_task(name="m.one")
        def one() -> int:
            return 1

        @register_task(name="m.two")
        async def two() -> int:
            return 2
        """,
    )
    empty = write_package("empty", "VALUE = 1\n")

    assert import_app_modules([tasks, empty]) == {tasks: ["m.one", "m.two"], empty: []}
    assert import_app_modules([tasks]) == {tasks: ["m.one", "m.two"]}, "already imported"


PF20_CASES = [
    pytest.param(
        "tasks",
        "import not_installed_pkg_xyz\n",
        r"an import inside it failed: ModuleNotFoundError: No module named "
        r"'not_installed_pkg_xyz'$",
        ModuleNotFoundError,
        id="a-missing-package",
    ),
    pytest.param(
        "taks",
        None,
        r"module not found \(No module named '{module}'\)$",
        ModuleNotFoundError,
        id="b-typo",
    ),
    pytest.param(
        "tasks",
        "raise RuntimeError('DATABASE_URL is not set')\n",
        r"it raised RuntimeError: DATABASE_URL is not set while being imported$",
        RuntimeError,
        id="c-raises",
    ),
]


@pytest.mark.parametrize(("module", "source", "reason", "cause"), PF20_CASES)
def test_pf20_app_module_import_errors_name_the_module_and_the_real_error(
    write_package: WritePackage, module: str, source: str | None, reason: str, cause: type
) -> None:
    """PF-20: celery read every ImportError as "no such module" and booted without tasks.

    https://github.com/celery/celery/issues/3986
    """
    name = write_package(module, source) if source else f"{write_package.package}.{module}"
    pattern = rf"^cannot import app module '{name}': " + reason.format(module=name)

    with pytest.raises(AppImportError, match=pattern) as caught:
        import_app_modules([name])

    assert caught.value.module == name
    assert isinstance(caught.value.__cause__, cause)
    assert isinstance(caught.value, ConfigError)


def test_pf20_app_module_registering_no_tasks_reports_an_empty_list(
    write_package: WritePackage,
) -> None:
    """PF-20 (d): the module imports cleanly but registers nothing; the caller warns."""
    name = write_package("tasks", "def not_a_task() -> None: ...\n")

    assert import_app_modules([name]) == {name: []}


def test_import_app_modules_reports_a_missing_parent_package_as_not_found() -> None:
    with pytest.raises(
        AppImportError,
        match=r"^cannot import app module 'nopkg_xyz\.tasks': module not found \(No module "
        r"named 'nopkg_xyz'\)$",
    ):
        import_app_modules(["nopkg_xyz.tasks"])


def test_import_app_modules_reports_a_broken_package_init_as_a_failed_import(
    write_package: WritePackage,
) -> None:
    package = write_package.package
    (write_package.root / package / "__init__.py").write_text("import not_installed_pkg_xyz\n")
    write_package("tasks", "")

    with pytest.raises(AppImportError, match=r"': an import inside it failed: ModuleNotFound"):
        import_app_modules([f"{package}.tasks"])


@pytest.mark.parametrize("name", ["myapp/tasks.py", "my-app.tasks", ".tasks", ""])
def test_import_app_modules_refuses_names_that_are_not_module_names(name: str) -> None:
    with pytest.raises(AppImportError, match=r"is not a dotted module name like myapp\.tasks"):
        import_app_modules([name])


def test_import_app_modules_finds_modules_in_the_current_directory(tmp_path: Path) -> None:
    module = f"cwd_tasks_{uuid.uuid4().hex[:8]}"
    (tmp_path / "cwd" / f"{module}.py").write_text(
        f"from looplane import register_task\n\n"
        f"@register_task(name='{module}.job')\ndef job() -> None: ...\n"
    )
    sys.path[:] = [p for p in sys.path if p not in ("", os.getcwd())]

    try:
        assert import_app_modules([module]) == {module: [f"{module}.job"]}
    finally:
        sys.modules.pop(module, None)
    assert sys.path[0] == os.getcwd()


# from_config ----------------------------------------------------------------------------------


async def test_from_config_builds_an_app_from_overrides() -> None:
    async with looplane.from_config(
        storage="memory", app=APP_TASKS, worker__concurrency=3, retry={"retries": 7}
    ) as app:
        task = await app.producer.send("factory_app.double", 21)

        assert isinstance(app.storage, InMemoryStorage)
        assert app.orchestrator.max_concurrent_tasks == 3
        assert task.max_retries == 7
        assert app.app_modules == {APP_TASKS: ["factory_app.double", "factory_app.shout"]}


async def test_from_config_overrides_win_over_the_file_and_env(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "custom.toml"
    config.write_text(
        f'app = ["{APP_TASKS}"]\n\n[storage]\nbackend = "memory"\n\n'
        '[worker]\nconcurrency = 2\nshutdown_grace = "5s"\n'
    )
    monkeypatch.setenv("LOOPLANE_WORKER__SHUTDOWN_GRACE", "9s")

    async with looplane.from_config(config, worker__concurrency=4) as app:
        assert isinstance(app.storage, InMemoryStorage)
        assert (app.orchestrator.max_concurrent_tasks, app.orchestrator.grace_s) == (4, 9.0)
        assert list(app.app_modules) == [APP_TASKS]


async def test_from_config_runs_a_worker_end_to_end(tmp_path: Path) -> None:
    stop = asyncio.Event()
    async with looplane.from_config(storage={"backend": "memory"}, app=[APP_TASKS]) as app:
        worker = asyncio.create_task(app.run_worker(stop))
        task = await app.producer.send("factory_app.shout", "done")
        result = await app.result_backend.wait(task.id, timeout=10)
        stop.set()
        await worker

    assert result.value == "DONE"


def test_from_config_names_the_override_in_a_validation_error() -> None:
    with pytest.raises(
        ConfigError, match=r"worker\.concurrency: .*from_config\(worker__concurrency\)"
    ):
        looplane.from_config(storage="memory", worker__concurrency=0)


def test_from_config_reports_an_app_import_error_before_opening_anything(tmp_path: Path) -> None:
    with pytest.raises(AppImportError, match=r"^cannot import app module 'nopkg_xyz': module"):
        looplane.from_config(storage__path=str(tmp_path / "db"), app=["nopkg_xyz"])

    assert not (tmp_path / "db").exists()


def test_from_config_names_a_bad_backend_with_its_origin(tmp_path: Path) -> None:
    with pytest.raises(
        ConfigError, match=r"^storage\.backend: unknown backend.*from from_config\(storage\)\)$"
    ):
        looplane.from_config(storage="lmbd")


def test_from_config_is_exported() -> None:
    assert looplane.from_config is from_config
    assert "from_config" in looplane.__all__
    assert "AppImportError" in looplane.__all__


# Redis ----------------------------------------------------------------------------------------

# Read at import: the `_isolated` fixture removes every LOOPLANE_* variable before each test.
TEST_REDIS_URL = os.environ.get("LOOPLANE_TEST_REDIS_URL", "")


async def test_build_storage_redis_alias_uses_url_lease_and_pool_size(
    tmp_path: Path, opened: list[Any]
) -> None:
    from looplane.storage.redis import RedisStorage

    storage_section = {
        "backend": "redis",
        "url": "redis://u:pw@redis.internal:6390/2",
        "lease": "45s",
        "max_connections": 7,
    }
    storage = build_storage(make_settings(tmp_path, storage=storage_section))
    opened.append(storage)

    assert isinstance(storage, RedisStorage)
    assert storage.url == "redis://u:pw@redis.internal:6390/2"
    assert storage.default_lease_s == 45.0
    assert storage._redis.connection_pool.max_connections == 7


async def test_build_result_backend_redis_follows_redis_storage_and_its_url(
    tmp_path: Path, opened: list[Any]
) -> None:
    from looplane.result.redis import RedisResultBackend

    settings = make_settings(
        tmp_path,
        storage={"backend": "redis", "url": "redis://redis.internal:6390/2", "max_connections": 4},
        results={"ttl": "2h"},
    )
    storage = build_storage(settings)
    results = build_result_backend(settings, storage)
    opened += [storage, results]

    assert isinstance(results, RedisResultBackend)
    assert (results.where, results.ttl_s, results.max_connections) == (
        "redis.internal:6390",
        7200.0,
        4,
    )


async def test_build_result_backend_redis_url_overrides_the_storage_url(
    tmp_path: Path, opened: list[Any]
) -> None:
    from looplane.result.redis import RedisResultBackend

    settings = make_settings(
        tmp_path,
        storage={"backend": "memory", "url": "redis://tasks.internal:6379/0"},
        results={"backend": "Redis", "url": "redis://results.internal:6380/1", "ttl": "never"},
    )
    storage = build_storage(settings)
    results = build_result_backend(settings, storage)
    opened += [storage, results]

    assert isinstance(results, RedisResultBackend)
    assert (results.where, results.ttl_s) == ("results.internal:6380", None)


async def test_build_result_backend_redis_without_any_url_uses_the_local_server(
    tmp_path: Path, opened: list[Any]
) -> None:
    from looplane.result.redis import RedisResultBackend

    settings = make_settings(tmp_path, results={"backend": "redis"})
    results = build_result_backend(settings, InMemoryStorage())
    opened.append(results)

    assert isinstance(results, RedisResultBackend)
    assert results.where == "127.0.0.1:6379"


BAD_URL = "http://u:hunter2@h/0"


@pytest.mark.parametrize(
    ("sections", "key"),
    [
        pytest.param({"storage": {"backend": "redis", "url": BAD_URL}}, "storage", id="storage"),
        pytest.param({"results": {"backend": "redis", "url": BAD_URL}}, "results", id="results"),
        pytest.param(
            {"storage": {"backend": "memory", "url": BAD_URL}, "results": {"backend": "redis"}},
            "storage",
            id="results-from-storage",
        ),
    ],
)
def test_build_redis_bad_url_names_the_setting_and_masks_the_password(
    tmp_path: Path, sections: dict[str, Any], key: str
) -> None:
    settings = make_settings(tmp_path, **sections)

    with pytest.raises(ConfigError, match=rf"^{key}\.url: .*\(got 'http://u:\*+@h/0'\)$") as caught:
        build(settings)

    assert "hunter2" not in str(caught.value)
    assert caught.value.__cause__ is None


def test_build_redis_results_bad_ttl_names_the_setting(tmp_path: Path) -> None:
    settings = assign(make_settings(tmp_path, results={"backend": "redis"}), "results.ttl", -1.0)

    with pytest.raises(ConfigError, match=r"^results\.ttl: result ttl_s must be a positive"):
        build_result_backend(settings, InMemoryStorage())


@pytest.mark.redis
async def test_from_config_runs_a_worker_on_redis_end_to_end(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``LOOPLANE_STORAGE=redis`` plus a URL is all it takes; results follow the storage."""
    if not TEST_REDIS_URL:
        pytest.skip("LOOPLANE_TEST_REDIS_URL is not set")
    from looplane.result.redis import RedisResultBackend
    from looplane.storage.redis import RedisStorage

    queue = f"factory-{uuid.uuid4().hex[:8]}"
    monkeypatch.setenv("LOOPLANE_STORAGE", "redis")
    monkeypatch.setenv("LOOPLANE_STORAGE__URL", TEST_REDIS_URL)
    monkeypatch.setenv("LOOPLANE_STORAGE__QUEUE", queue)
    stop = asyncio.Event()
    async with looplane.from_config(app=[APP_TASKS]) as app:
        assert isinstance(app.storage, RedisStorage)
        assert isinstance(app.result_backend, RedisResultBackend)
        worker = asyncio.create_task(app.run_worker(stop))
        task = await app.producer.send("factory_app.shout", "done")
        try:
            result = await app.result_backend.wait(task.id, timeout=10)
        finally:
            stop.set()
            await worker
        client = app.result_backend._client
        keys = [key async for key in client.scan_iter(match=f"*{{{queue}}}*")]
        keys += [key async for key in client.scan_iter(match=f"*{task.id}*")]
        if keys:
            await client.delete(*keys)
        index = app.result_backend._key("index")
        await client.zrem(index, f"{task.id}:1")
        if not await client.exists(index):
            await client.delete(app.result_backend._key("seq"))
        await client.srem(f"{app.storage.queue_prefix}:queues", queue)

    assert result.value == "DONE"


@pytest.mark.parametrize(
    "results", [pytest.param({}, id="shared-path"), pytest.param(None, id="own-results-path")]
)
async def test_build_relaxed_sync_applies_to_storage_and_lmdb_results(
    tmp_path: Path, opened: list[Any], results: dict[str, str] | None
) -> None:
    section = {"path": str(tmp_path / "results")} if results is None else results
    settings = make_settings(tmp_path, storage={"backend": "lmdb", "sync": False}, results=section)

    storage = build_storage(settings)
    opened.append(storage)
    backend = build_result_backend(settings, storage)
    opened.append(backend)

    assert isinstance(storage, LMDBStorage)
    assert isinstance(backend, LMDBResultBackend)
    assert storage.env.env.flags()["metasync"] is False
    assert backend.sync is False
    probe = LMDBEnv.acquire(backend.path, sync=False)
    try:
        assert probe.env.flags()["metasync"] is False
    finally:
        probe.release()


def test_build_storage_names_storage_sync_when_the_path_is_open_with_the_other_sync(
    tmp_path: Path,
) -> None:
    env = LMDBEnv.acquire(tmp_path / "db", sync=True)
    try:
        settings = make_settings(tmp_path, storage={"backend": "lmdb", "sync": False})
        with pytest.raises(
            ConfigError, match=r"^storage\.sync: the LMDB environment at .* False\)$"
        ):
            build_storage(settings)
    finally:
        env.release()
