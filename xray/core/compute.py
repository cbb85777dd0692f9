"""Run a pure function over chunks of work: inline, in local processes, or on a Dask cluster.

`compute.executor: local` uses a process pool on this machine; `dask` sends the chunks to a
dask.distributed scheduler (`compute.dask_address`), or to a LocalCluster on 127.0.0.1
started for the stage when the address is empty. Workers of a real cluster may not see
this machine's files, so chunks carry bytes in and results carry bytes back: only the
stage process reads and writes the workspace. Results come back in input order with a
bounded number of chunks in flight, so memory stays flat however large the input is.

The mapped function must be importable on the workers: every worker needs this project
installed at the same commit. `Runner` checks that before the first chunk (the source
hash of the modules named by the stage, and the versions of the libraries that shape the
output bytes) and fails with one line naming `compute.dask_address` otherwise.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import inspect
import logging
import os
import platform
import signal
import zlib
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from xray.core.errors import WorkError
from xray.core.params import ComputeParams

log = logging.getLogger("xray.compute")

S = TypeVar("S")
T = TypeVar("T")
R = TypeVar("R")

ADDRESS_KEY = "compute.dask_address"
CONNECT_TIMEOUT_S = 10
"""Seconds to reach the scheduler (and for it to have a worker) before failing."""
IN_FLIGHT_PER_WORKER = 2
"""Chunks submitted ahead per worker: none idles, and memory holds only these."""
LOOPBACK_ANY_PORT = "127.0.0.1:0"
"""Where a stage's LocalCluster serves its HTTP endpoints: loopback, a free port."""
INSTALL_HINT = "install this project at the same commit on every worker"


class ComputeError(WorkError):
    """The executor cannot be used: the message is one line naming the compute key."""


M_TRIM_THRESHOLD = -1  # glibc mallopt parameters (malloc.h)
M_MMAP_THRESHOLD = -3
KEEP_FREED_BYTES = 256 * 2**20
"""Freed heap a process keeps for reuse (glibc), instead of returning it to the OS."""
MMAP_ABOVE_BYTES = 32 * 2**20
_ALLOCATOR_TUNED: list[bool] = []


def keep_freed_memory() -> bool:
    """Let glibc's malloc reuse freed memory for numpy temporaries (once per process).

    By default glibc maps every array above its (adaptive) threshold afresh and returns
    the top of the heap to the OS on free, so each new 224x224 float64 temporary of an
    image operation page-faults its 400 kB in again: 4x the time of the arithmetic. Keeping
    up to KEEP_FREED_BYTES of freed heap removes that. Memory allocation only: no value
    changes. Returns False where the C library is not glibc (nothing done).
    """
    if _ALLOCATOR_TUNED:
        return _ALLOCATOR_TUNED[0]
    ok = False
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        ok = bool(libc.mallopt(M_MMAP_THRESHOLD, MMAP_ABOVE_BYTES)) and bool(
            libc.mallopt(M_TRIM_THRESHOLD, KEEP_FREED_BYTES)
        )
    except (OSError, AttributeError):
        ok = False
    _ALLOCATOR_TUNED.append(ok)
    return ok


def default_workers() -> int:
    """CPU cores this process may use (the affinity mask where the OS has one)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def fingerprint(modules: Sequence[str]) -> dict[str, str]:
    """sha256 of each module's source, and the versions that shape output bytes (Python, libs)."""
    import numpy
    import PIL

    out = {
        "python": ".".join(platform.python_version_tuple()[:2]),
        "numpy": numpy.__version__,
        "pillow": PIL.__version__,
        "zlib": zlib.ZLIB_RUNTIME_VERSION,
    }
    for name in modules:
        source = inspect.getsourcefile(importlib.import_module(name))
        out[name] = hashlib.sha256(Path(source or "").read_bytes()).hexdigest()
    return out


def _differences(mine: dict[str, str], theirs: dict[str, str]) -> list[str]:
    """Keys whose values differ between two fingerprints."""
    return sorted(k for k in mine.keys() | theirs.keys() if mine.get(k) != theirs.get(k))


def check_workers(client: Any, modules: Sequence[str], expected: dict[str, str]) -> None:
    """Fail with one line unless every worker imports `modules` with the `expected` fingerprint."""
    address = client.scheduler.address
    try:
        theirs = client.run(fingerprint, list(modules))
    except Exception as e:  # unpickling xray.core.compute fails where the project is not installed
        why = " ".join(f"{type(e).__name__}: {e}".split())
        raise ComputeError(
            f"{ADDRESS_KEY}: the workers at {address} cannot run this project's code "
            f"({why}); {INSTALL_HINT}"
        ) from None
    for worker, found in sorted(theirs.items()):
        diff = _differences(expected, found)
        if diff:
            shown = ", ".join(
                f"{k} {found.get(k, '?')[:12]} != {expected.get(k, '?')[:12]}" for k in diff
            )
            raise ComputeError(
                f"{ADDRESS_KEY}: worker {worker} differs from this process ({shown}); "
                f"{INSTALL_HINT}"
            )


def _ignore_sigint() -> None:
    """Pool initializer: leave Ctrl-C to the stage process, which cleans up its staging."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _ordered(
    submit: Callable[[T], Any], specs: Sequence[S], prepare: Callable[[S], T], window: int
) -> Iterator[Any]:
    """Submit prepared specs with at most `window` in flight; yield results in input order."""
    pending: deque[Any] = deque()
    try:
        for spec in specs:
            pending.append(submit(prepare(spec)))
            if len(pending) >= window:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    finally:  # an error, an interrupt or an abandoned iterator: drop what has not run
        for future in pending:
            future.cancel()


def _identity(spec: Any) -> Any:
    """The default `prepare`: the spec is the chunk."""
    return spec


class Runner:
    """Maps a pure, module-level function over chunks on the configured executor.

    Use as a context manager: entering connects to (or starts) the Dask cluster and checks
    its workers, so a bad address fails before the stage writes anything; leaving cancels
    queued chunks and shuts the pool or cluster down, also on an error or an interrupt.
    """

    def __init__(self, params: ComputeParams, modules: Sequence[str] = ()) -> None:
        self.params = params
        self.modules = tuple(modules)
        self.workers = params.workers or default_workers()
        self._client: Any = None
        self._cluster: Any = None
        self._stack = contextlib.ExitStack()

    @property
    def where(self) -> str:
        """A short description of the executor, for logs."""
        if self._client is None:
            return f"{self.workers} local process{'es' if self.workers > 1 else ''}"
        return f"{self.workers} dask workers at {self._client.scheduler.address}"

    def __enter__(self) -> Runner:
        if self.params.executor == "dask":
            try:
                self._connect()
            except BaseException:
                self._stack.close()
                raise
        return self

    def __exit__(self, *exc: object) -> None:
        self._stack.close()

    def _connect(self) -> None:
        """Start or reach the cluster, wait for a worker, check the workers' code."""
        import dask
        from distributed import Client, LocalCluster

        expected = fingerprint(self.modules)
        address = self.params.dask_address
        # The stage keeps its own logging; dask's stays quiet unless something breaks.
        logging.getLogger("distributed").setLevel(logging.ERROR)
        self._stack.enter_context(dask.config.set({"distributed.comm.timeouts.connect": "5s"}))
        if address:
            try:
                self._client = Client(address, timeout=f"{CONNECT_TIMEOUT_S}s")
            except (OSError, TimeoutError, ValueError) as e:  # ValueError: unknown protocol
                why = " ".join(str(e).split())
                raise ComputeError(
                    f"{ADDRESS_KEY}: cannot reach a Dask scheduler at {address} "
                    f"within {CONNECT_TIMEOUT_S}s ({why})"
                ) from None
            self._stack.callback(self._client.close)
            try:
                self._client.wait_for_workers(1, timeout=CONNECT_TIMEOUT_S)
            except TimeoutError:
                raise ComputeError(
                    f"{ADDRESS_KEY}: the scheduler at {address} has no workers "
                    f"(none joined within {CONNECT_TIMEOUT_S}s)"
                ) from None
            self.workers = sum(self._client.nthreads().values())
        else:
            try:
                self._cluster = LocalCluster(
                    n_workers=self.workers,
                    threads_per_worker=1,
                    processes=True,
                    host="127.0.0.1",
                    dashboard_address=LOOPBACK_ANY_PORT,
                    silence_logs=logging.ERROR,
                )
            except (OSError, RuntimeError, TimeoutError) as e:
                why = " ".join(f"{type(e).__name__}: {e}".split())
                raise ComputeError(
                    f"compute.executor: cannot start a local Dask cluster of {self.workers} "
                    f"workers ({why})"
                ) from None
            self._stack.callback(self._cluster.close)
            self._client = Client(self._cluster)
            self._stack.callback(self._client.close)
        check_workers(self._client, self.modules, expected)
        log.info("running on %s", self.where)

    def imap(
        self,
        fn: Callable[[T], R],
        specs: Sequence[S],
        prepare: Callable[[S], T] = _identity,
    ) -> Iterator[R]:
        """fn(prepare(spec)) for each spec, in order; `prepare` runs here (e.g. reads bytes)."""
        window = IN_FLIGHT_PER_WORKER * max(1, self.workers)
        if self._client is not None:
            client = self._client

            def submit(chunk: T) -> Any:
                return client.submit(fn, chunk, pure=False)

            yield from _ordered(submit, specs, prepare, window)
            return
        if self.workers <= 1 or len(specs) < 2:
            for spec in specs:
                yield fn(prepare(spec))
            return
        pool = ProcessPoolExecutor(min(self.workers, len(specs)), initializer=_ignore_sigint)
        try:

            def submit_local(chunk: T) -> Future[R]:
                return pool.submit(fn, chunk)

            yield from _ordered(submit_local, specs, prepare, window)
        finally:
            # Queued chunks are dropped; running ones end before the caller cleans up.
            pool.shutdown(wait=True, cancel_futures=True)
