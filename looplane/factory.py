"""The factory: builds storage, results, serializer, producer, consumer and orchestrator.

Everything a worker or a library user runs is decided by one `Settings` object, and this
module is the only place that turns settings into objects, so the CLI and
`looplane.from_config` cannot drift apart. Backends are named by a short alias (``memory``,
``lmdb``, ``redis``, ``json``) or by an import path (``package.module:ClassName``); a
third-party backend is a class that subclasses the right base and takes its ``options``
table as keyword arguments, so it needs no change to Looplane.

Every failure is a `ConfigError` that names the setting, the value and the reason, because a
worker that starts with the wrong backend, or without its task functions
(https://github.com/celery/celery/issues/3986), fails later and far from the cause.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import inspect
import logging
import os
import re
import sys
import threading
from typing import TYPE_CHECKING, Any, Self, TypeVar

from looplane.broker.consumer import StorageConsumer
from looplane.broker.producer import StorageProducer
from looplane.broker.serializer import JSONSerializer, Serializer
from looplane.errors import AppImportError, BrokerError, ConfigError, StorageError
from looplane.orchestrator import Orchestrator
from looplane.result.base import ResultBackend, check_ttl
from looplane.result.lmdb import LMDBResultBackend
from looplane.result.memory import InMemoryResultBackend
from looplane.storage.base import StorageBackend
from looplane.storage.lmdb import LMDBStorage
from looplane.storage.memory import InMemoryStorage
from looplane.task import Backoff, registry

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Mapping, Sequence
    from types import ModuleType, TracebackType

    from pydantic import SecretStr

    from looplane.config import Settings

__all__ = [
    "RESULT_ALIASES",
    "SERIALIZER_ALIASES",
    "STORAGE_ALIASES",
    "App",
    "build",
    "build_result_backend",
    "build_serializer",
    "build_storage",
    "from_config",
    "import_app_modules",
]

logger = logging.getLogger(__name__)

T = TypeVar("T")

STORAGE_ALIASES = ("memory", "lmdb", "redis")
"""Storage backends named by a short alias; anything else is an import path."""
RESULT_ALIASES = ("memory", "lmdb", "redis")
"""Result backends named by a short alias; anything else is an import path."""
SERIALIZER_ALIASES = ("json",)
"""Serializers named by a short alias; anything else is an import path."""

_DOTTED_NAME = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$")


# Errors -------------------------------------------------------------------------------------


def _problem(
    key: str, reason: str, value: object, origins: Mapping[str, str] | None
) -> ConfigError:
    """A `ConfigError` in the settings' format: ``key: reason (got value, from origin)``."""
    origin = (origins or {}).get(key)
    where = f", from {origin}" if origin else ""
    return ConfigError(f"{key}: {reason} (got {value!r}{where})")


@contextlib.contextmanager
def _naming(key: str, value: object, origins: Mapping[str, str] | None) -> Iterator[None]:
    """Re-raise a component's own `ConfigError` with the setting that caused it."""
    try:
        yield
    except ConfigError as exc:
        raise _problem(key, str(exc), value, origins) from exc


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


# Importing ----------------------------------------------------------------------------------


def _ensure_cwd_importable() -> None:
    """Put the current directory on ``sys.path``, as ``python -m`` does.

    The CLI is an installed script, so ``looplane worker -A myapp.tasks`` run from a project
    directory would otherwise not find ``myapp``; celery and uvicorn do the same.
    """
    cwd = os.getcwd()
    if "" not in sys.path and cwd not in sys.path:
        sys.path.insert(0, cwd)
        # A module written after the path's directory listing was cached would be missed.
        importlib.invalidate_caches()


def _import_failure(module: str, exc: Exception) -> str:
    """Say whether `module` itself is missing or something it ran failed.

    Reading every ImportError as "no such module" hid real errors in task modules
    (https://github.com/celery/celery/pull/5211), so only a `ModuleNotFoundError` for the
    module itself or one of its parent packages counts as "not found".
    """
    missing = getattr(exc, "name", None)
    is_missing = isinstance(exc, ModuleNotFoundError) and missing is not None
    if is_missing and (module == missing or module.startswith(f"{missing}.")):
        return f"module not found ({exc})"
    if isinstance(exc, ImportError):
        return f"an import inside it failed: {_describe(exc)}"
    return f"it raised {_describe(exc)} while being imported"


def _import(module: str) -> ModuleType:
    _ensure_cwd_importable()
    return importlib.import_module(module)


# Pluggable backends -------------------------------------------------------------------------


def _load_class(
    key: str, spec: str, base: type, aliases: Sequence[str], origins: Mapping[str, str] | None
) -> type:
    """The class that the import path `spec` names, checked to subclass `base`."""
    module_name, colon, attribute = spec.strip().partition(":")
    if not colon:
        known = ", ".join(aliases)
        reason = f"unknown backend; use one of {known}, or an import path package.module:Class"
        raise _problem(key, reason, spec, origins)
    if not _DOTTED_NAME.match(module_name) or not _DOTTED_NAME.match(attribute):
        reason = "is not an import path of the form package.module:ClassName"
        raise _problem(key, reason, spec, origins)
    try:
        found: object = _import(module_name)
    except Exception as exc:
        reason = f"cannot import {module_name!r}: {_import_failure(module_name, exc)}"
        raise _problem(key, reason, spec, origins) from exc
    for part in attribute.split("."):
        if not hasattr(found, part):
            reason = f"{module_name!r} has no attribute {attribute!r}"
            raise _problem(key, reason, spec, origins)
        found = getattr(found, part)
    return _checked_class(key, spec, found, base, origins)


def _checked_class(
    key: str, spec: str, found: object, base: type, origins: Mapping[str, str] | None
) -> type:
    if not isinstance(found, type):
        reason = f"is a {type(found).__name__}, not a class subclassing {base.__name__}"
        raise _problem(key, reason, spec, origins)
    if not issubclass(found, base):
        reason = f"class {found.__name__} is not a subclass of {base.__name__}"
        raise _problem(key, reason, spec, origins)
    if inspect.isabstract(found):
        missing = ", ".join(sorted(getattr(found, "__abstractmethods__", ())))
        reason = f"class {found.__name__} is abstract; it does not implement: {missing}"
        raise _problem(key, reason, spec, origins)
    return found


def _construct(
    key: str,
    spec: str,
    cls: Callable[..., T],
    options: Mapping[str, Any],
    url: SecretStr | None,
    origins: Mapping[str, str] | None,
) -> T:
    """Call `cls` with the ``options`` table, plus ``url=`` when one is set."""
    section = key.partition(".")[0]
    kwargs = dict(options)
    secret = url.get_secret_value() if url is not None else None
    if secret is not None:
        if "url" in kwargs:
            reason = f"'url' is set twice, as {section}.url and in {section}.options"
            raise _problem(f"{section}.options", reason, sorted(kwargs), origins)
        kwargs["url"] = secret
    try:
        return cls(**kwargs)
    except Exception as exc:
        reason = _construct_failure(exc, kwargs)
        masked = _mask_options(_mask(reason, secret) if secret else reason, options)
        if masked != reason:
            # The driver's message quoted the password; a traceback must not print it.
            raise _problem(key, masked, spec, origins) from None
        raise _problem(key, reason, spec, origins) from exc


def _mask(text: str, url: str) -> str:
    """`text` with `url` shown redacted and its password masked wherever it appears."""
    # Imported here, like `load_settings`: only a URL setting needs it.
    from looplane.config import mask_url_in

    return mask_url_in(text, url)


def _mask_options(text: str, options: Mapping[str, Any]) -> str:
    """`text` with the value of each option named like a secret (password, token) masked."""
    from looplane.config import MASK, _looks_secret

    for name, value in options.items():
        if _looks_secret(name) and isinstance(value, str) and value:
            text = text.replace(value, MASK)
    return text


def _construct_failure(exc: Exception, kwargs: Mapping[str, Any]) -> str:
    if isinstance(exc, TypeError):
        given = ", ".join(sorted(kwargs)) or "none"
        return f"rejected its options (given: {given}): {exc}"
    return f"could not be constructed: {_describe(exc)}"


def _no_options(
    section: str, alias: str, options: Mapping[str, Any], origins: Mapping[str, str] | None
) -> None:
    """Refuse an ``options`` table for a built-in backend, which would be silently ignored."""
    if options:
        reason = f"the built-in {alias!r} backend takes no options; use {section}.<key> settings"
        raise _problem(f"{section}.options", reason, sorted(options), origins)


def _resolve(
    key: str, spec: str, base: type, aliases: Sequence[str], origins: Mapping[str, str] | None
) -> str | type:
    """The alias that `spec` names (case-insensitive), or the class of its import path."""
    alias = spec.strip().lower()
    if alias in aliases:
        return alias
    return _load_class(key, spec, base, aliases, origins)


def _unusable(
    key: str, path: str | os.PathLike[str], exc: Exception, origins: Mapping[str, str] | None
) -> ConfigError:
    """The problem for an LMDB directory that cannot be opened."""
    return _problem(key, f"cannot open LMDB there: {exc}", os.fspath(path), origins)


# Builders -----------------------------------------------------------------------------------


def build_storage(
    settings: Settings, *, origins: Mapping[str, str] | None = None
) -> StorageBackend:
    """The storage that ``settings.storage`` names, opened.

    ``memory`` keeps tasks in this process; ``lmdb`` keeps them under ``storage.path``, shared
    with every process that opens the same directory; ``redis`` keeps them on the server at
    ``storage.url``, with ``storage.max_connections`` connections at most (the driver is
    imported only then). An import path names a
    `StorageBackend` subclass, constructed with ``storage.options`` (and ``url=`` when
    ``storage.url`` is set). `origins` (dotted key to where its value came from) only
    improves error messages.

    Raises:
        ConfigError: The backend cannot be imported, is not a `StorageBackend`, rejects its
            options, or its directory cannot be opened; the message names the setting.
    """
    target = _resolve(
        "storage.backend", settings.storage.backend, StorageBackend, STORAGE_ALIASES, origins
    )
    return _make_storage(settings, target, origins)


def _make_storage(
    settings: Settings, target: str | type, origins: Mapping[str, str] | None
) -> StorageBackend:
    section = settings.storage
    if isinstance(target, type):
        made = _construct(
            "storage.backend", section.backend, target, section.options, section.url, origins
        )
        assert isinstance(made, StorageBackend)
        return made
    _no_options("storage", target, section.options, origins)
    if target == "memory":
        return InMemoryStorage(lease_s=section.lease)
    if target == "redis":
        return _redis_storage(settings, origins)
    try:
        with _naming("storage.sync", section.sync, origins):
            return LMDBStorage(
                section.path,
                lease_s=section.lease,
                map_size=int(section.map_size),
                max_readers=section.max_readers,
                max_map_size=int(section.max_map_size),
                sync=section.sync,
            )
    except (OSError, StorageError) as exc:
        raise _unusable("storage.path", section.path, exc, origins) from exc


def _redis_storage(settings: Settings, origins: Mapping[str, str] | None) -> StorageBackend:
    # Imported here: the Redis modules are only needed, and redis-py only installed, when
    # a setting names Redis.
    from looplane.storage.redis import RedisStorage

    section = settings.storage
    url = section.url.get_secret_value() if section.url is not None else None
    with _naming_url("storage.url", url, origins):
        return RedisStorage(
            *([] if url is None else [url]),
            lease_s=section.lease,
            max_connections=section.max_connections,
        )


def _redis_results(settings: Settings, origins: Mapping[str, str] | None) -> ResultBackend:
    from looplane.result.base import check_ttl
    from looplane.result.redis import RedisResultBackend

    section = settings.results
    with _naming("results.ttl", section.ttl, origins):
        check_ttl(section.ttl)
    secret = section.url or settings.storage.url
    key = "results.url" if section.url is not None else "storage.url"
    url = secret.get_secret_value() if secret is not None else None
    with _naming_url(key, url, origins):
        return RedisResultBackend(
            *([] if url is None else [url]),
            ttl_s=section.ttl,
            max_connections=settings.storage.max_connections,
        )


@contextlib.contextmanager
def _naming_url(key: str, url: str | None, origins: Mapping[str, str] | None) -> Iterator[None]:
    """Re-raise a Redis backend's `ConfigError` naming the URL setting, its password masked."""
    try:
        yield
    except ConfigError as exc:
        shown = "(default)" if url is None else _mask(url, url)
        reason = str(exc) if url is None else _mask(str(exc), url)
        raise _problem(key, reason, shown, origins) from None


def build_result_backend(
    settings: Settings, storage: StorageBackend, *, origins: Mapping[str, str] | None = None
) -> ResultBackend:
    """The result backend that ``settings.results`` names, opened beside `storage`.

    Without ``results.backend``, results follow the storage: an `LMDBStorage` gets LMDB
    results in its own directory (one environment serves both, so another process that
    opens ``LMDBStorage(path)`` and ``LMDBResultBackend(path)`` sees the queue and the
    results), a `RedisStorage` gets Redis results on the same server, any other storage
    gets in-memory results. ``results.path`` moves LMDB results elsewhere; Redis results
    use ``results.url``, or ``storage.url`` when it is unset; ``results.ttl`` is how long
    results are kept.

    Note:
        Results of a third-party storage default to memory, visible only in this process;
        set ``results.backend`` to share them.

    Raises:
        ConfigError: As for `build_storage`, naming the ``results.*`` setting.
    """
    spec = settings.results.backend or _default_results(storage)
    target = _resolve("results.backend", spec, ResultBackend, RESULT_ALIASES, origins)
    return _make_results(settings, target, storage, origins)


def _default_results(storage: StorageBackend) -> str:
    if isinstance(storage, LMDBStorage):
        return "lmdb"
    # Compared by module, so that deciding the default never imports the Redis driver.
    if type(storage).__module__ == "looplane.storage.redis":
        return "redis"
    return "memory"


def _make_results(
    settings: Settings,
    target: str | type,
    storage: StorageBackend,
    origins: Mapping[str, str] | None,
) -> ResultBackend:
    section = settings.results
    if isinstance(target, type):
        spec = section.backend or ""
        made = _construct("results.backend", spec, target, section.options, section.url, origins)
        assert isinstance(made, ResultBackend)
        return made
    _no_options("results", target, section.options, origins)
    if target == "memory":
        with _naming("results.ttl", section.ttl, origins):
            return InMemoryResultBackend(ttl_s=section.ttl)
    if target == "redis":
        return _redis_results(settings, origins)
    # Limitation: LMDB results kept at their own results.path open with the default
    # max_readers and max_map_size (64 GiB), because LMDBResultBackend takes neither; at the
    # storage path they share the storage's environment and its settings.
    # Lifted by: max_readers and max_map_size parameters on LMDBResultBackend.
    key = "results.path" if section.path else "storage.path"
    shared = storage.path if isinstance(storage, LMDBStorage) else settings.storage.path
    path = section.path or shared
    with _naming("results.ttl", section.ttl, origins):
        check_ttl(section.ttl)
    try:
        # The TTL is checked above, so a ConfigError here is a sync conflict with an
        # environment this process already has open.
        with _naming("storage.sync", settings.storage.sync, origins):
            return LMDBResultBackend(
                path,
                ttl_s=section.ttl,
                map_size=int(settings.storage.map_size),
                sync=settings.storage.sync,
            )
    except (OSError, StorageError) as exc:
        raise _unusable(key, path, exc, origins) from exc


def build_serializer(settings: Settings, *, origins: Mapping[str, str] | None = None) -> Serializer:
    """The serializer that ``settings.serializer`` names.

    ``json`` is `JSONSerializer` in ``serializer.encoding``; an import path names a
    `Serializer` subclass, constructed with ``serializer.options``.

    Raises:
        ConfigError: As for `build_storage`, naming the ``serializer.*`` setting.
    """
    section = settings.serializer
    target = _resolve(
        "serializer.backend", section.backend, Serializer, SERIALIZER_ALIASES, origins
    )
    if isinstance(target, type):
        made = _construct(
            "serializer.backend", section.backend, target, section.options, None, origins
        )
        assert isinstance(made, Serializer)
        return made
    _no_options("serializer", target, section.options, origins)
    with _naming("serializer.encoding", section.encoding, origins):
        return JSONSerializer(encoding=section.encoding)


def build(settings: Settings, *, origins: Mapping[str, str] | None = None) -> App:
    """The whole object graph for `settings`, wired, as an `App`.

    Every backend class is imported and checked before any is opened, so a bad import path
    leaves nothing open. The app modules in ``settings.app`` are not imported here: call
    `import_app_modules` (as `from_config` and the CLI do).

    Raises:
        ConfigError: A backend or a setting is invalid; the message names the setting.
    """
    serializer = build_serializer(settings, origins=origins)
    storage_target = _resolve(
        "storage.backend", settings.storage.backend, StorageBackend, STORAGE_ALIASES, origins
    )
    if settings.results.backend is not None:
        _resolve(
            "results.backend", settings.results.backend, ResultBackend, RESULT_ALIASES, origins
        )
    storage = _make_storage(settings, storage_target, origins)
    try:
        result_backend = build_result_backend(settings, storage, origins=origins)
        return _wire(settings, storage, result_backend, serializer, origins)
    except BaseException:
        _close_now(storage)
        raise


def _wire(
    settings: Settings,
    storage: StorageBackend,
    result_backend: ResultBackend,
    serializer: Serializer,
    origins: Mapping[str, str] | None,
) -> App:
    retry = settings.retry
    try:
        backoff = Backoff(
            kind=retry.backoff, base_s=retry.base_delay, max_s=retry.max_delay, jitter=retry.jitter
        )
        with _naming("task.timeout", settings.task.timeout, origins):
            producer = StorageProducer(
                storage,
                serializer=serializer,
                queue=settings.storage.queue,
                max_payload_bytes=int(settings.serializer.max_payload),
                retries=retry.retries,
                timeout=settings.task.timeout,
                backoff=backoff,
            )
        consumer = StorageConsumer(storage, serializer=serializer, queue=settings.storage.queue)
        with _naming("worker.concurrency", settings.worker.concurrency, origins):
            orchestrator = Orchestrator(
                consumer,
                result_backend,
                settings.worker.concurrency,
                grace_s=settings.worker.shutdown_grace,
            )
    except BaseException:
        _close_now(result_backend)
        raise
    return App(
        settings,
        storage=storage,
        result_backend=result_backend,
        serializer=serializer,
        producer=producer,
        consumer=consumer,
        orchestrator=orchestrator,
    )


def _close_now(resource: StorageBackend | ResultBackend) -> None:
    """Close a resource from synchronous code, after a later build step failed.

    `build` is synchronous and may run inside an event loop, so the close coroutine runs on
    a loop of its own in a short-lived thread. Its failure is logged, not raised: the build
    error is the one the caller needs.
    """

    def run() -> None:
        try:
            asyncio.run(resource.close())
        except Exception:
            logger.debug("closing after a failed build failed", exc_info=True)

    closer = threading.Thread(target=run, name="looplane-build-cleanup")
    closer.start()
    closer.join()


# The app ------------------------------------------------------------------------------------


class App:
    """A wired producer, consumer, orchestrator and backends, built from one `Settings`.

    Use it as an async context manager; leaving the block closes it::

        async with looplane.from_config(storage="memory") as app:
            task = await app.producer.send("reports.count_words", "notes/")
            result = await app.result_backend.wait(task.id)

    Attributes:
        settings: The settings it was built from.
        storage: Where tasks wait.
        result_backend: Where results are kept (may share the storage's LMDB environment).
        serializer: How tasks become bytes; the producer and consumer share it.
        producer: Sends tasks, with the settings' retry, backoff and timeout defaults.
        consumer: Leases tasks for the orchestrator.
        orchestrator: Runs tasks under ``worker.concurrency``; see `run_worker`.
        app_modules: Each imported app module and the task names it registered (filled by
            `from_config`).
    """

    def __init__(
        self,
        settings: Settings,
        *,
        storage: StorageBackend,
        result_backend: ResultBackend,
        serializer: Serializer,
        producer: StorageProducer,
        consumer: StorageConsumer,
        orchestrator: Orchestrator,
    ) -> None:
        self.settings = settings
        self.storage = storage
        self.result_backend = result_backend
        self.serializer = serializer
        self.producer = producer
        self.consumer = consumer
        self.orchestrator = orchestrator
        self.app_modules: dict[str, list[str]] = {}
        self._closing: asyncio.Task[None] | None = None
        self._worker_ran = False

    @property
    def closed(self) -> bool:
        """True once `close` was called."""
        return self._closing is not None

    async def run_worker(self, stop: asyncio.Event, force: asyncio.Event | None = None) -> None:
        """Run tasks until `stop` is set, then stop gracefully; returns once stopped.

        After `stop`, no new task is leased and running tasks get ``worker.shutdown_grace``
        seconds to finish; those still running then are cancelled and returned to the queue
        without using up an attempt. Setting `force` (before or during that wait) cancels
        them at once instead, still returning them to the queue. Cancelling `run_worker`
        acts like `force` and then re-raises `CancelledError`. The app stays open: close it
        (or leave its ``async with`` block) afterwards.

        Raises:
            BrokerError: The app is closed, or `run_worker` was called on it before.
        """
        if self.closed:
            raise BrokerError("app is closed; build a new one to run a worker")
        if self._worker_ran:
            raise BrokerError("run_worker runs once per app; build a new one to run again")
        self._worker_ran = True
        await self.orchestrator.start()
        try:
            await _first_set(stop, force)
        except asyncio.CancelledError:
            await self.orchestrator.stop(wait=False)
            raise
        await self._stop_orchestrator(force)

    async def _stop_orchestrator(self, force: asyncio.Event | None) -> None:
        if force is None or force.is_set():
            await self.orchestrator.stop(wait=force is None)
            return
        graceful = asyncio.ensure_future(self.orchestrator.stop(wait=True))
        forced = asyncio.ensure_future(force.wait())
        try:
            await asyncio.wait({graceful, forced}, return_when=asyncio.FIRST_COMPLETED)
            if forced.done():
                # A second stop while one is under way cuts its grace period short.
                await self.orchestrator.stop(wait=False)
            await graceful
        finally:
            forced.cancel()

    async def close(self) -> None:
        """Stop the orchestrator if it runs, then close the consumer, producer and backends.

        The consumer closes first, returning tasks it leased but did not answer; then the
        storage and the result backend close, each once even when they share an LMDB
        environment. Calling it again, or concurrently, waits for the first close; a close
        that failed is not retried. Cancelling it does not cancel the closing.
        """
        if self._closing is None:
            self._closing = asyncio.ensure_future(self._close())
        elif self._closing.done():
            return
        await asyncio.shield(self._closing)

    async def _close(self) -> None:
        # The exit stack runs every callback, last pushed first, even if one fails; it raises
        # the last failure with the earlier ones chained as its context.
        async with contextlib.AsyncExitStack() as stack:
            stack.push_async_callback(self.result_backend.close)
            if not _same(self.storage, self.result_backend):
                stack.push_async_callback(self.storage.close)
            stack.push_async_callback(self.producer.close)
            stack.push_async_callback(self.consumer.close)
            stack.push_async_callback(self.orchestrator.stop)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()


def _same(a: object, b: object) -> bool:
    """True if `a` and `b` are one object (a backend may serve as storage and results)."""
    return a is b


async def _first_set(stop: asyncio.Event, force: asyncio.Event | None) -> None:
    """Return when `stop` or `force` is set."""
    if force is None:
        await stop.wait()
        return
    waiters = {asyncio.ensure_future(stop.wait()), asyncio.ensure_future(force.wait())}
    try:
        await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()


# App modules --------------------------------------------------------------------------------


def import_app_modules(names: Sequence[str]) -> dict[str, list[str]]:
    """Import each app module and return the task names each one registered.

    The current directory is put on ``sys.path`` first, so ``-A myapp.tasks`` works from a
    project directory. A module imported earlier reports the task functions defined in it.
    An empty list means the module registered no task; callers should warn, since a worker
    without its task functions fails every task it receives.

    Raises:
        AppImportError: A module is not found, an import inside it failed, or it raised
            while being imported; the error names the module, says which of these happened
            and chains the original exception.
    """
    found: dict[str, list[str]] = {}
    for name in names:
        before = {entry.name: entry for entry in registry}
        module = name.strip()
        _import_app_module(module)
        found[module] = [
            entry.name
            for entry in registry
            if before.get(entry.name) is not entry or _defined_in(entry.module, module)
        ]
    return found


def _import_app_module(module: str) -> None:
    if not _DOTTED_NAME.match(module):
        reason = "is not a dotted module name like myapp.tasks (not a file path)"
        raise AppImportError(module=module, reason=reason)
    try:
        _import(module)
    except Exception as exc:
        raise AppImportError(module=module, reason=_import_failure(module, exc)) from exc


def _defined_in(entry_module: str, module: str) -> bool:
    return entry_module == module or entry_module.startswith(module + ".")


# from_config --------------------------------------------------------------------------------


def from_config(path: str | os.PathLike[str] | None = None, **overrides: Any) -> App:
    """Load settings, import the app modules they name and build an `App`.

    Settings come, highest first, from `overrides`, ``LOOPLANE_*`` environment variables,
    the config file (`path`, else ``LOOPLANE_CONFIG``, else ``./looplane.toml``, else
    ``[tool.looplane]`` in ``./pyproject.toml``) and the defaults. An override is a section
    and field joined by ``__`` (``worker__concurrency=4``), a section given its backend
    (``storage="memory"``) or a section given a dict (``storage={"backend": "memory"}``)::

        async with looplane.from_config(storage="memory", app=["myapp.tasks"]) as app:
            await app.producer.send("myapp.add", 1, 2)

    Nothing is opened until the settings are valid and the app modules imported.

    Raises:
        ConfigError: A setting is invalid; one line per problem, naming the key, the value
            and where it came from.
        AppImportError: An app module failed to import.
    """
    # Imported here: pydantic would more than double the import time of `import looplane`
    # for programs that only send tasks.
    from looplane.config import load_settings

    names = {keyword: f"from_config({keyword})" for keyword in overrides}
    config_file = os.fspath(path) if path is not None else None
    loaded = load_settings(config_file, overrides=overrides, override_names=names)
    modules = import_app_modules(loaded.settings.app)
    app = build(loaded.settings, origins=loaded.origins)
    app.app_modules = modules
    return app
