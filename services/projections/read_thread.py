"""Read models on a thread of their own, for queries whose Python work is long.

A report that spends tens of milliseconds in Python (shaping thousands of rows, sorting
long lists of durations, encoding a large answer) would hold the API's event loop for
that long, and every other request of the process would wait behind it. Such a query
runs here instead: on one thread with its own event loop and its own small pool of read
connections, so the API's loop keeps answering while it computes (the interpreter
switches between the threads every few milliseconds).

Only what the query reads is shared with the caller: the read models it opened (and at
which state) are recorded for the caller's :func:`recording_reads`, so a cached answer is
keyed by the state it was computed from, whichever thread computed it.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import threading
from collections.abc import Awaitable, Callable
from typing import TypeVar

from sqlalchemy.ext.asyncio import AsyncEngine

from services.projections.read_models import ReadModels

T = TypeVar("T")
STOP_SECONDS = 10.0


class ReadThread:
    """Runs ``work(read_models)`` on a thread with an event loop and connections of its
    own (started at the first call; the engine too, from ``make_engine``)."""

    def __init__(
        self,
        make_engine: Callable[[], AsyncEngine],
        wait_seconds: float,
        max_waiters: int,
        name: str = "read-thread",
    ) -> None:
        self._make_engine = make_engine
        self._wait_seconds = wait_seconds
        self._max_waiters = max_waiters
        self._name = name
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._models: ReadModels | None = None
        self._lock = threading.Lock()

    def _start(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._loop is None:
                loop = asyncio.new_event_loop()
                ready = threading.Event()

                def serve() -> None:
                    asyncio.set_event_loop(loop)
                    loop.call_soon(ready.set)
                    loop.run_forever()
                    loop.close()

                thread = threading.Thread(target=serve, name=self._name, daemon=True)
                thread.start()
                ready.wait()
                self._loop, self._thread = loop, thread
            return self._loop

    def _read_models(self) -> ReadModels:
        # Called on the thread's loop: the engine's connections belong to it.
        if self._models is None:
            self._models = ReadModels(self._make_engine(), self._wait_seconds, self._max_waiters)
        return self._models

    async def run(self, work: Callable[[ReadModels], Awaitable[T]]) -> T:
        """``work``'s answer, computed on the thread (in a copy of the caller's context)."""
        loop = self._start()
        context = contextvars.copy_context()
        done: concurrent.futures.Future[T] = concurrent.futures.Future()

        def begin() -> None:
            async def job() -> T:
                return await work(self._read_models())

            task = loop.create_task(job(), context=context)

            def finished(t: asyncio.Task[T]) -> None:
                if done.done():  # the caller gave up (and cancelled the task)
                    return
                if t.cancelled():
                    done.cancel()
                elif (error := t.exception()) is not None:
                    done.set_exception(error)
                else:
                    done.set_result(t.result())

            task.add_done_callback(finished)
            done.add_done_callback(
                lambda f: loop.call_soon_threadsafe(task.cancel) if f.cancelled() else None
            )

        loop.call_soon_threadsafe(begin)
        return await asyncio.wrap_future(done)

    async def aclose(self) -> None:
        """Close the connections and stop the thread (if it ever started)."""
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        models = self._models

        async def shutdown() -> None:
            # what is still running there (a read-model position poller, a report whose
            # caller went away) ends before the connections close
            others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in others:
                task.cancel()
            await asyncio.gather(*others, return_exceptions=True)
            if models is not None:
                await models.engine.dispose()

        await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(shutdown(), loop))
        loop.call_soon_threadsafe(loop.stop)
        await asyncio.to_thread(thread.join, STOP_SECONDS)
        self._loop = self._thread = None
        self._models = None
