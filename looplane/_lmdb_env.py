"""One LMDB environment per directory per process, with one writer thread and group commit.

Why this shape (see ``design/DELIVERY.md`` section 2):

* LMDB's locks belong to a (process, file) pair, so a directory is opened once per process and
  shared, reference-counted, by every storage and result backend that names it, whatever path
  spelling they use (https://github.com/jnwatson/py-lmdb/issues/129).
* A write transaction is tied to the thread that began it, and a second one on the same thread
  deadlocks, so every write runs on one dedicated thread
  (https://github.com/jnwatson/py-lmdb/pull/471).
* Each commit is an fsync. The writer thread therefore takes every operation queued while the
  previous commit ran, and first lets the submitting event loop finish its current pass, so
  a finished task's result, its ack and the next claim share one commit. If one of them
  fails, the batch is replayed with each operation in a nested transaction, so the failing
  one rolls back alone. An operation's caller is answered only
  after the commit, so "returned" still means "durable".
* Relaxed sync (``sync=False``) opens the environment with LMDB's ``MDB_NOMETASYNC``: a commit
  flushes its data pages but defers the metadata flush to the next commit, one fsync instead
  of two. A process crash, even SIGKILL, loses nothing (the pages are in the OS page cache);
  an OS crash or power loss may undo the last commit but never corrupts the file. No fsync
  at all (``MDB_NOSYNC``) is not offered: LMDB documents that a system crash can then corrupt
  the database (http://www.lmdb.tech/doc/group__mdb__env.html).
* An environment is never used across ``fork``: the child drops its inherited handles and
  opens its own (https://github.com/jnwatson/py-lmdb/issues/346).
* Other processes learn of new work through a doorbell file: the writer rewrites one byte after
  a commit that made work ready, and waiters watch the file with inotify. Watching ``data.mdb``
  itself does not work, because writes through the memory map raise no inotify events.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import errno
import logging
import os
import queue
import resource
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

import lmdb

from looplane.errors import ConfigError, StorageError, StorageFull, StorageUnavailable

__all__ = [
    "DB_NAMES",
    "DEFAULT_MAP_SIZE",
    "DEFAULT_MAX_MAP_SIZE",
    "DEFAULT_MAX_READERS",
    "LMDBEnv",
    "Txn",
    "uuid_key",
]

logger = logging.getLogger("looplane.storage.lmdb")

T = TypeVar("T")
if TYPE_CHECKING:
    # Every transaction is begun with buffers=False, so keys and values are bytes.
    Txn = lmdb.Transaction[bytes]
else:
    Txn = lmdb.Transaction

DEFAULT_MAP_SIZE = 1 << 30
# The map is only reserved address space (writemap is off, so the file grows with the data),
# so a large cap costs nothing until used. It bounds a runaway producer well before most
# disks fill, and 64 GiB of waiting tasks means the queue is not being drained.
DEFAULT_MAX_MAP_SIZE = 64 << 30
# Sends are refused once live data reaches the cap less a reserve of 1/_RESERVE_SHARE of it
# (at most _MAX_RESERVE), so acks, retries and results, which LMDB's copy-on-write also
# needs free pages for, find room. An eighth proved too little to drain a 1 MiB map.
_RESERVE_SHARE = 4
_MAX_RESERVE = 1 << 30
# Files hold task arguments and results: owner only (the umask may make them stricter).
_DIR_MODE = 0o700
_FILE_MODE = 0o600
_NO_SPACE = (errno.ENOSPC, errno.EFBIG, errno.EDQUOT)
# Less room than this on the disk (or under the file size limit) makes an EIO a full disk.
_SHORT_OF_SPACE = 64 << 20
DEFAULT_MAX_READERS = 1024
DB_NAMES = (
    "meta",
    "jobs",
    "payloads",
    "ready",
    "leases",
    "delayed",
    "dead",
    "results",
    "result_order",
    "result_exp",
)

_MAX_BATCH = 256
# Longest the writer waits for the loop that submitted a write to finish its current pass
# before committing; bounds the delay when that loop is blocked or was closed.
_CATCH_UP_S = 0.005
_READER_CHECK_S = 60.0
_STOP = object()

# (operation, doorbell to ring, caller's loop, caller's future, is a send)
Op = tuple[Callable[[Any], Any], str | None, asyncio.AbstractEventLoop, "asyncio.Future[Any]", bool]


class _Gate:
    """Shared for transactions, exclusive for a map resize, which needs no txn open."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._active = 0
        self._resizing = False

    @contextlib.contextmanager
    def shared(self) -> Iterator[None]:
        with self._cond:
            while self._resizing:
                self._cond.wait()
            self._active += 1
        try:
            yield
        finally:
            with self._cond:
                self._active -= 1
                self._cond.notify_all()

    @contextlib.contextmanager
    def exclusive(self) -> Iterator[None]:
        with self._cond:
            while self._resizing or self._active:
                self._cond.wait()
            self._resizing = True
        try:
            yield
        finally:
            with self._cond:
                self._resizing = False
                self._cond.notify_all()


class LMDBEnv:
    """A shared LMDB environment. Get one with `acquire`, give it back with `release`."""

    _open: ClassVar[dict[str, LMDBEnv]] = {}
    _inherited: ClassVar[list[LMDBEnv]] = []
    _lock = threading.Lock()

    def __init__(
        self,
        path: str,
        map_size: int,
        max_readers: int,
        max_map_size: int = DEFAULT_MAX_MAP_SIZE,
        *,
        sync: bool = True,
    ) -> None:
        self.path = path
        self.pid = os.getpid()
        self.refs = 0
        self.max_map_size = max(max_map_size, map_size)
        self.sync = sync
        if os.path.lexists(path) and not os.path.isdir(path):
            raise StorageError(
                f"the LMDB path {path} exists but is not a directory", backend="lmdb"
            )
        try:
            Path(path).mkdir(mode=_DIR_MODE, parents=True, exist_ok=True)
        except OSError as exc:
            raise StorageError(
                f"cannot create the LMDB directory {path}: {exc.strerror}", backend="lmdb"
            ) from exc
        try:
            self.env = lmdb.open(
                path,
                map_size=map_size,
                mode=_FILE_MODE,
                max_dbs=len(DB_NAMES) + 2,
                max_readers=max_readers,
                subdir=True,
                lock=True,
                sync=True,
                metasync=sync,
                writemap=False,
                max_spare_txns=0,
            )
        except lmdb.Error as exc:
            raise StorageError(
                f"cannot open LMDB environment at {path}: {exc}", backend="lmdb"
            ) from exc
        try:
            self._open_dbs()
        except lmdb.Error as exc:
            self.env.close()
            raise StorageError(
                f"cannot open LMDB environment at {path}: {exc}", backend="lmdb"
            ) from exc
        self._gate = _Gate()
        self._bells = {
            name: _Bell(os.path.join(path, f"{name}.bell")) for name in ("ready", "results")
        }
        self._listeners: dict[str, set[tuple[asyncio.AbstractEventLoop, Callable[[], None]]]]
        self._listeners = {name: set() for name in self._bells}
        self._ops: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._stopping = False
        self._writer = threading.Thread(
            target=self._write_loop, name=f"looplane-lmdb:{path}", daemon=True
        )
        self._writer.start()

    def _open_dbs(self) -> None:
        # Slots left by processes killed while reading are freed before this one takes its
        # own, so a crash loop can never exhaust max_readers.
        self.env.reader_check()
        self._last_reader_check = time.monotonic()
        self._page_size: int = self.env.stat()["psize"]
        with self.env.begin(write=True) as txn:
            self.dbs = {name: self.env.open_db(name.encode(), txn=txn) for name in DB_NAMES}

    @classmethod
    def acquire(
        cls,
        path: str | os.PathLike[str],
        *,
        map_size: int = DEFAULT_MAP_SIZE,
        max_readers: int = DEFAULT_MAX_READERS,
        max_map_size: int = DEFAULT_MAX_MAP_SIZE,
        sync: bool = True,
    ) -> LMDBEnv:
        """The process's environment for `path`, opened on first use.

        The first opener's `map_size`, `max_readers` and `max_map_size` apply to the whole
        process; later ones share its environment. `sync` must agree with the open
        environment's: durability is a promise each opener relies on, so it is never
        silently changed.

        Raises:
            ConfigError: The environment is open here with the other `sync` setting.
            StorageError: The environment cannot be opened.
        """
        real = os.path.realpath(os.fspath(path))
        with cls._lock:
            env = cls._open.get(real)
            if env is None or env.pid != os.getpid():
                env = cls(real, map_size, max_readers, max_map_size, sync=sync)
                cls._open[real] = env
            elif env.sync != sync:
                raise ConfigError(
                    f"the LMDB environment at {real} is open in this process with "
                    f"sync={env.sync}; it cannot also be opened with sync={sync}: give "
                    "storage and results the same sync setting"
                )
            env.refs += 1
            return env

    def release(self) -> None:
        """Give back one reference; the last one closes the environment."""
        with LMDBEnv._lock:
            if self.refs <= 0:
                return
            self.refs -= 1
            if self.refs > 0 or self.pid != os.getpid():
                return
            if LMDBEnv._open.get(self.path) is self:
                del LMDBEnv._open[self.path]
        self._ops.put(_STOP)
        self._writer.join()
        for bell in self._bells.values():
            bell.close()
        with self._gate.exclusive():
            self.env.close()

    @classmethod
    def _after_fork_in_child(cls) -> None:
        # The child must never use or close the parent's handles: closing them would release
        # the parent's reader slots. Keep them referenced so they are never freed here.
        cls._inherited.extend(cls._open.values())
        cls._open = {}
        cls._lock = threading.Lock()

    @property
    def closed(self) -> bool:
        """True once the last reference was released."""
        return not self._writer.is_alive()

    # Writing -----------------------------------------------------------------------------

    async def write(
        self, fn: Callable[[Txn], T], *, ring: str | None = None, send: bool = False
    ) -> T:
        """Run `fn` in a write transaction on the writer thread and return its result.

        The result arrives after the commit. If cancelled, the write still happens (or not)
        as a whole; only the answer is lost. After a successful commit the `ring` doorbell
        rings, waking waiters in this and other processes. Mark writes that add work with
        `send`: when the map is full they are refused first, so acks and results committed
        in the same group still succeed.

        Raises:
            StorageFull: The map is at its cap or the disk refused to grow the file.
            StorageError: LMDB failed; the message names the path.
        """
        if self.pid != os.getpid():
            raise StorageUnavailable("LMDB environment used after fork; reopen it", backend="lmdb")
        if not self._writer.is_alive():
            raise StorageUnavailable(f"LMDB environment at {self.path} is closed", backend="lmdb")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._ops.put((fn, ring, loop, future, send))
        return await future

    def _write_loop(self) -> None:
        try:
            self._serve()
        finally:
            self._refuse_queued()

    def _refuse_queued(self) -> None:
        # Writes queued after the last release can no longer be served; answer them rather
        # than leave their callers waiting forever.
        closed = StorageUnavailable(f"LMDB environment at {self.path} is closed", backend="lmdb")
        while True:
            try:
                op = self._ops.get_nowait()
            except queue.Empty:
                return
            if op is not _STOP:
                _, _, loop, future, _ = op
                with contextlib.suppress(RuntimeError):
                    loop.call_soon_threadsafe(_answer, [(future, False, closed)])

    def _serve(self) -> None:
        while not self._stopping:
            first = self._ops.get()
            if first is _STOP:
                return
            _let_loop_catch_up(first[2])
            batch: list[Op] = [first]
            self._gather(batch)
            self._apply(batch)

    def _gather(self, batch: list[Op]) -> None:
        """Add the operations queued meanwhile to `batch`; note a stop request."""
        while len(batch) < _MAX_BATCH:
            try:
                op = self._ops.get_nowait()
            except queue.Empty:
                return
            if op is _STOP:
                self._stopping = True
                return
            batch.append(op)

    def _apply(self, batch: list[Op]) -> None:
        outcomes = self._commit_with_growth(batch, gather=True)
        rings = {op[1] for op, (ok, _) in zip(batch, outcomes, strict=True) if ok and op[1]}
        for name in rings:
            self._ring(name)
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[Any, bool, Any]]] = {}
        for (_, _, loop, future, _), (ok, value) in zip(batch, outcomes, strict=True):
            by_loop.setdefault(loop, []).append((future, ok, value))
        for loop, answers in by_loop.items():
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                loop.call_soon_threadsafe(_answer, answers)
        self._maybe_check_readers()

    def _commit_with_growth(
        self, batch: list[Op], *, gather: bool = False
    ) -> list[tuple[bool, Any]]:
        while True:
            try:
                return self._commit(batch, gather=gather)
            except lmdb.MapFullError:
                # A map that cannot grow fails this batch's callers. Letting the error escape
                # would end the writer thread and leave every caller of the batch waiting.
                try:
                    self._grow()
                except StorageFull as exc:
                    return self._sends_apart(batch, exc)
            except lmdb.MapResizedError:
                self._adopt_new_size()
            except lmdb.Error as exc:
                error = self._write_error(exc)
                if isinstance(error, StorageFull):
                    return self._sends_apart(batch, error)
                return [(False, error)] * len(batch)

    # Limitation: a result and its ack are two operations; when a group reaches _MAX_BATCH
    # between them they commit in two groups, so at the cap the result can fail while the
    # ack commits, leaving a finished task without its result.
    # Lifted by: one operation that stores the result and acks (see Orchestrator._store_then).
    def _sends_apart(self, batch: list[Op], full: StorageFull) -> list[tuple[bool, Any]]:
        # With no room left, sends are the writes that can wait. The other writes retry as
        # one group, so a result and the ack submitted with it still commit or fail together;
        # then each send retries alone, so one large send cannot sink the small ones.
        sends = [i for i, op in enumerate(batch) if op[4]]
        if not sends or len(batch) == 1:
            return [(False, full)] * len(batch)
        outcomes: list[tuple[bool, Any]] = [(False, full)] * len(batch)
        rest = [i for i, op in enumerate(batch) if not op[4]]
        groups = ([rest] if rest else []) + [[i] for i in sends]
        for group in groups:
            done = self._commit_with_growth([batch[i] for i in group])
            for i, outcome in zip(group, done, strict=True):
                outcomes[i] = outcome
        return outcomes

    def _write_error(self, exc: lmdb.Error) -> StorageError:
        # LMDB reports a failed file write by its errno text; a full disk, a file size limit
        # or a quota is "full", which callers can act on, not a generic failure. A write
        # the disk cut short is reported as EIO, so EIO counts as full when space is short.
        text = str(exc)
        no_space = any(os.strerror(code) in text for code in _NO_SPACE)
        if no_space or (os.strerror(errno.EIO) in text and self._short_of_space()):
            return self._full(f"the disk refused to extend the file ({text})")
        return StorageError(f"LMDB write at {self.path} failed: {exc}", backend="lmdb")

    # Limitation: LMDB turns a write the disk cut short into EIO without the cause, so EIO is
    # taken as "full" only when under _SHORT_OF_SPACE is left; a real I/O error on a nearly
    # full disk is then reported as full.
    # Lifted by: LMDB reporting the errno of a short write.
    def _short_of_space(self) -> bool:
        try:
            fs = os.statvfs(self.path)
            size = os.stat(os.path.join(self.path, "data.mdb")).st_size
        except OSError:  # pragma: no cover - the directory vanished under us
            return False
        limit, _ = resource.getrlimit(resource.RLIMIT_FSIZE)
        file_room = limit - size if limit != resource.RLIM_INFINITY else fs.f_bavail
        return min(fs.f_bavail * fs.f_frsize, file_room) < _SHORT_OF_SPACE

    def _full(self, why: str) -> StorageFull:
        size = self.env.info()["map_size"]
        return StorageFull(
            f"LMDB storage at {self.path} is full: {why}; map_size={size} "
            f"max_map_size={self.max_map_size}. Drain the queue (run workers, purge dead "
            "tasks), free disk space or raise storage.max_map_size",
            path=self.path,
            map_size=size,
            max_map_size=self.max_map_size,
        )

    # Limitation: live pages leave out the free list and pages that open readers still pin,
    # so a drain under a reader that stays open for long can still reach the cap; its acks
    # and results then fail with StorageFull and the tasks run again when their leases end.
    # Lifted by: counting free pages too (LMDB's free DB, which py-lmdb does not expose).
    def check_send_room(self, txn: Txn) -> None:
        """Refuse a send whose data would leave too little room to drain the queue.

        Call it in the send's transaction after its writes, so their pages count. It
        compares the live pages of every database with the cap less a reserve kept for
        acks, retries and results.

        Raises:
            StorageFull: Live data passed the send limit; the caller's transaction must
                roll back.
        """
        limit = self.max_map_size - min(self.max_map_size // _RESERVE_SHARE, _MAX_RESERVE)
        if self._live_bytes(txn) > limit:
            raise self._full(f"live data passed the send limit of {limit} bytes")

    def _live_bytes(self, txn: Txn) -> int:
        pages = 0
        for db in (*self.dbs.values(), None):
            stat = txn.stat(db) if db is not None else txn.stat()
            pages += stat["branch_pages"] + stat["leaf_pages"] + stat["overflow_pages"]
        return pages * self._page_size

    def _commit(self, batch: list[Op], *, gather: bool = False) -> list[tuple[bool, Any]]:
        # Operations almost never fail, so the batch first runs flat in one transaction.
        # If one raises, that transaction is abandoned and the batch is replayed with each
        # operation in a nested transaction, so the failure rolls back alone. Operations
        # keep no state outside LMDB, so running one twice is safe.
        with self._gate.shared():
            txn = self.env.begin(write=True)
            if gather:
                # Beginning waits while another process commits; what was queued meanwhile
                # joins this commit instead of waiting for a commit of its own.
                self._gather(batch)
            try:
                outcomes = [(True, fn(txn)) for fn, _, _, _, _ in batch]
            except BaseException as exc:
                txn.abort()
                if isinstance(exc, lmdb.MapFullError | lmdb.MapResizedError):
                    raise
                return self._commit_isolated(batch)
            txn.commit()
        return outcomes

    def _commit_isolated(self, batch: list[Op]) -> list[tuple[bool, Any]]:
        outcomes: list[tuple[bool, Any]] = []
        with self._gate.shared(), self.env.begin(write=True) as txn:
            for fn, _, _, _, _ in batch:
                try:
                    with self.env.begin(write=True, parent=txn) as child:
                        outcomes.append((True, fn(child)))
                except (lmdb.MapFullError, lmdb.MapResizedError):
                    raise
                except lmdb.Error as exc:
                    error = StorageError(f"LMDB write at {self.path} failed: {exc}", backend="lmdb")
                    outcomes.append((False, error))
                except Exception as exc:  # noqa: BLE001 - handed to the caller, not swallowed
                    outcomes.append((False, exc))
        return outcomes

    def _grow(self) -> None:
        current = self.env.info()["map_size"]
        size = min(current * 2, self.max_map_size)
        if size <= current:
            raise self._full("the map reached max_map_size")
        logger.warning("LMDB map full; growing path=%s map_size=%d", self.path, size)
        try:
            with self._gate.exclusive():
                self.env.set_mapsize(size)
        except lmdb.Error as exc:
            raise self._full(f"the map cannot grow to {size} bytes ({exc})") from exc

    def _adopt_new_size(self) -> None:
        with self._gate.exclusive():
            self.env.set_mapsize(0)

    def _maybe_check_readers(self) -> None:
        # Readers killed with SIGKILL keep their slot and pin old pages until checked.
        now = time.monotonic()
        if now - self._last_reader_check >= _READER_CHECK_S:
            self._last_reader_check = now
            cleared = self.env.reader_check()
            if cleared:
                logger.warning("cleared stale LMDB readers path=%s count=%d", self.path, cleared)

    # Reading -----------------------------------------------------------------------------

    def read_sync(self, fn: Callable[[Txn], T]) -> T:
        """Run `fn` in a read transaction on the calling thread (keep it short).

        Raises:
            StorageError: LMDB failed; the message names the path.
        """
        try:
            return self._read(fn)
        except lmdb.Error as exc:
            raise StorageError(f"LMDB read at {self.path} failed: {exc}", backend="lmdb") from exc

    def _read(self, fn: Callable[[Txn], T]) -> T:
        while True:
            try:
                with self._gate.shared(), self.env.begin(write=False, buffers=False) as txn:
                    return fn(txn)
            except lmdb.MapResizedError:
                self._adopt_new_size()
            except lmdb.ReadersFullError:
                self.env.reader_check()
                with self._gate.shared(), self.env.begin(write=False) as txn:
                    return fn(txn)

    async def read(self, fn: Callable[[Txn], T]) -> T:
        """Run `fn` in a read transaction in a worker thread, off the event loop."""
        if self.pid != os.getpid() or self.closed:
            raise StorageUnavailable(
                f"LMDB environment at {self.path} is not open here", backend="lmdb"
            )
        return await asyncio.to_thread(self.read_sync, fn)

    # Doorbells ---------------------------------------------------------------------------

    def listen(
        self, bell: str, loop: asyncio.AbstractEventLoop, callback: Callable[[], None]
    ) -> Callable[[], None]:
        """Call `callback` on `loop` after each commit here that rings `bell`.

        Returns a function that stops listening.
        """
        entry = (loop, callback)
        self._listeners[bell].add(entry)
        return lambda: self._listeners[bell].discard(entry)

    def bell_path(self, bell: str) -> str:
        """The doorbell file other processes watch for `bell`."""
        return self._bells[bell].path

    def _ring(self, name: str) -> None:
        self._bells[name].ring()
        for loop, callback in list(self._listeners[name]):
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(callback)


def _let_loop_catch_up(loop: asyncio.AbstractEventLoop) -> None:
    # A loop that submits one write usually submits more in the same pass: answering a
    # commit frees task slots, so results, acks and the next claim follow together.
    # Committing at the first one would split them over two commits, two fsyncs each, and
    # halve what a worker drains. So the writer first lets the loop run what it has ready;
    # on an idle loop that costs one wake-up, far less than the fsync it saves.
    caught_up = threading.Event()
    try:
        loop.call_soon_threadsafe(caught_up.set)
    except RuntimeError:  # the loop was closed; its writes are still committed
        return
    caught_up.wait(_CATCH_UP_S)


def _answer(answers: list[tuple[asyncio.Future[Any], bool, Any]]) -> None:
    for future, ok, value in answers:
        if future.done():
            continue
        if ok:
            future.set_result(value)
        else:
            future.set_exception(value)


class _Bell:
    """A one-byte file whose rewrite other processes see as an inotify event."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, _FILE_MODE)

    def ring(self) -> None:
        os.pwrite(self._fd, b"\x01", 0)

    def close(self) -> None:
        os.close(self._fd)


def uuid_key(task_id: str) -> bytes:
    """The 16 bytes of a UUID task id, the key of its records.

    Raises:
        ValueError: `task_id` is not a UUID in any form `uuid.UUID` reads.
    """
    if type(task_id) is str and len(task_id) == 32:  # the usual form, without UUID()'s cost
        # A try block, not contextlib.suppress: this runs several times per task on the
        # writer thread, and the context manager costs more than the conversion.
        try:
            key = bytes.fromhex(task_id)
        except ValueError:
            key = b""  # not plain hex; UUID() below reads the other forms or says why not
        if len(key) == 16:  # fromhex skips whitespace, so 32 characters may be fewer bytes
            return key
    try:
        return uuid.UUID(hex=task_id).bytes
    except (AttributeError, TypeError) as exc:
        raise ValueError(str(exc)) from None


# Inotify ---------------------------------------------------------------------------------

_IN_MODIFY = 0x00000002
_IN_ATTRIB = 0x00000004
_IN_NONBLOCK = os.O_NONBLOCK
_IN_CLOEXEC = os.O_CLOEXEC


def _load_libc() -> Any:
    name = ctypes.util.find_library("c")
    if not name or not hasattr(os, "pwrite"):
        return None  # pragma: no cover - non-Linux
    libc = ctypes.CDLL(name, use_errno=True)
    if not hasattr(libc, "inotify_init1"):
        return None  # pragma: no cover - non-Linux
    return libc


_libc = _load_libc()


class DoorbellWatch:
    """Sets an asyncio event whenever a doorbell file is rung, by any process.

    Without inotify (not Linux) it never fires by itself; waiters then poll, bounded by the
    short timeouts they already use.
    """

    def __init__(
        self, path: str, loop: asyncio.AbstractEventLoop, on_ring: Callable[[], None]
    ) -> None:
        self._loop = loop
        self._fd = -1
        self._on_ring = on_ring
        if _libc is None:  # pragma: no cover - non-Linux
            return
        fd = _libc.inotify_init1(_IN_NONBLOCK | _IN_CLOEXEC)
        if fd < 0:  # pragma: no cover - out of inotify instances
            logger.warning(
                "inotify unavailable (%s); falling back to polling", os.strerror(ctypes.get_errno())
            )
            return
        if _libc.inotify_add_watch(fd, path.encode(), _IN_MODIFY | _IN_ATTRIB) < 0:
            os.close(fd)  # pragma: no cover - the bell file exists by construction
            return  # pragma: no cover
        self._fd = fd
        loop.add_reader(fd, self._drain)

    @property
    def active(self) -> bool:
        """True when inotify events arrive; False means callers must poll."""
        return self._fd >= 0

    def _drain(self) -> None:
        while True:
            try:
                if not os.read(self._fd, 4096):
                    break
            except OSError as exc:
                if exc.errno in (errno.EAGAIN, errno.EWOULDBLOCK):
                    break
                raise
        self._on_ring()

    def close(self) -> None:
        """Stop watching."""
        if self._fd >= 0:
            with contextlib.suppress(RuntimeError, ValueError):
                self._loop.remove_reader(self._fd)
            os.close(self._fd)
            self._fd = -1


os.register_at_fork(after_in_child=LMDBEnv._after_fork_in_child)
