"""Parse many files in worker processes, so that one bad file cannot take the app down.

Each file is read by ``read_document`` in a ``ProcessPoolExecutor`` with the "spawn" context. A worker that
dies (a crash in a C library, ``os._exit``, the OOM killer) breaks the pool: the files that were in flight
are then re-run one at a time in a fresh pool, and the one that breaks it again, alone, is marked failed
("the parser crashed on it"). A file that runs past ``timeout_s`` is marked failed and its worker killed.
Either way the batch always finishes, with exactly one result per path.

Test-only hooks (read in the worker; never set them outside tests):
``SLOWTUNE_TEST_CRASH_ON=<file name>`` makes the worker ``os._exit(1)`` on that file, and
``SLOWTUNE_TEST_HANG_ON=<file name>`` makes it sleep forever on it.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import multiprocessing
import os
import time
from collections import deque
from collections.abc import Iterator
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any

from slowtune.documents.types import ParsedDocument, ReadError
from slowtune.progress import Progress, ensure

CRASH_REASON = "the parser crashed on it"
_POLL_S = 0.2


def _parse_one(path: str, max_bytes: int) -> tuple[str, Any, Any]:
    """Runs in the worker. Returns ("ok", doc, None) or ("error", reason, status): plain values pickle safely."""
    name = Path(path).name
    if os.environ.get("SLOWTUNE_TEST_CRASH_ON") == name:  # test-only, see the module docstring
        os._exit(1)
    if os.environ.get("SLOWTUNE_TEST_HANG_ON") == name:  # test-only
        while True:
            time.sleep(60)
    from slowtune.documents.readers import read_document

    try:
        return ("ok", read_document(Path(path), max_bytes=max_bytes), None)
    except ReadError as e:
        return ("error", e.reason, e.status)
    except MemoryError:
        return ("error", "ran out of memory while being parsed", "failed")
    except RecursionError:
        return ("error", "is nested too deeply to parse", "failed")
    except Exception as e:
        return ("error", f"could not be parsed ({type(e).__name__}: {e})", "failed")


class _Pool:
    """A spawn-context process pool that can be killed outright (a hung worker never returns)."""

    def __init__(self, workers: int) -> None:
        self.executor = cf.ProcessPoolExecutor(
            max_workers=workers, mp_context=multiprocessing.get_context("spawn")
        )

    def kill(self) -> None:
        processes = list((getattr(self.executor, "_processes", None) or {}).values())
        for p in processes:
            with contextlib.suppress(Exception):
                p.kill()
        self.executor.shutdown(wait=False, cancel_futures=True)
        for p in processes:
            with contextlib.suppress(Exception):
                p.join(timeout=5)

    def close(self) -> None:
        self.executor.shutdown(wait=True, cancel_futures=True)


def parse_many(
    paths: list[Path],
    *,
    max_bytes: int,
    progress: Progress | None = None,
    workers: int = 2,
    timeout_s: float = 120,
) -> Iterator[tuple[Path, ParsedDocument | ReadError]]:
    """Parse ``paths`` in worker processes; yield ``(path, document or ReadError)`` as each completes.

    Reports ("parse", done, total) and checks for cancel between results (and while waiting); on cancel the
    workers are killed and ``Cancelled`` is raised. Closing the generator early also stops the workers.
    """
    progress = ensure(progress)
    paths = [Path(p) for p in paths]
    total = len(paths)
    workers = max(1, int(workers))
    progress.report("parse", 0, total, force=True)
    if not paths:
        return

    queue: deque[int] = deque(range(total))  # indices still to submit
    suspects: deque[int] = deque()  # in flight when a worker died: re-run one at a time
    in_flight: dict[cf.Future, tuple[int, float]] = {}
    done = 0
    pool = _Pool(workers)
    try:
        while queue or suspects or in_flight:
            # Keep at most `workers` files in flight, so each one's clock starts when a worker takes it.
            # While there are suspects, run them alone: a crash then names its file.
            if suspects:
                if not in_flight:
                    i = suspects.popleft()
                    in_flight[pool.executor.submit(_parse_one, str(paths[i]), max_bytes)] = (
                        i,
                        time.monotonic(),
                    )
            else:
                while queue and len(in_flight) < workers:
                    i = queue.popleft()
                    in_flight[pool.executor.submit(_parse_one, str(paths[i]), max_bytes)] = (
                        i,
                        time.monotonic(),
                    )

            finished, _ = cf.wait(list(in_flight), timeout=_POLL_S, return_when=cf.FIRST_COMPLETED)
            progress.check()

            broken: list[int] = []
            for fut in finished:
                i, _started = in_flight.pop(fut)
                try:
                    status, a, b = fut.result()
                except BrokenProcessPool:
                    broken.append(i)
                    continue
                except Exception as e:  # pickling trouble and the like: this file only
                    result: ParsedDocument | ReadError = ReadError(
                        f"could not be parsed ({type(e).__name__}: {e})", "failed"
                    )
                else:
                    result = a if status == "ok" else ReadError(a, b)
                done += 1
                progress.report("parse", done, total)
                yield paths[i], result
                progress.check()

            if broken:
                # Every file in flight fails with the pool; its other futures will report the same.
                broken.extend(i for i, _ in in_flight.values())
                in_flight.clear()
                pool.kill()
                pool = _Pool(workers)
                if len(broken) == 1:
                    # Alone in flight (or the only one left): this is the file that crashed the worker.
                    done += 1
                    progress.report("parse", done, total)
                    yield paths[broken[0]], ReadError(CRASH_REASON, "failed")
                    progress.check()
                else:
                    suspects.extend(sorted(broken))
                continue

            now = time.monotonic()
            late = [(f, i) for f, (i, started) in in_flight.items() if now - started > timeout_s]
            if late:
                # A running task cannot be cancelled: kill the workers, fail the late files, re-run the rest.
                late_ids = {i for _, i in late}
                rerun = [i for i, _ in in_flight.values() if i not in late_ids]
                in_flight.clear()
                pool.kill()
                pool = _Pool(workers)
                queue.extendleft(reversed(rerun))
                for _, i in late:
                    done += 1
                    progress.report("parse", done, total)
                    yield (
                        paths[i],
                        ReadError(f"took longer than {timeout_s:g} s to parse (timed out)", "failed"),
                    )
                    progress.check()
    except BaseException:
        pool.kill()
        raise
    else:
        pool.close()
