"""A real HTTP receiver for webhook tests: an asyncio server in the test process whose
answer the test chooses (200, 500, or no answer at all), recording every request."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from standardwebhooks.webhooks import Webhook as Verifier


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Received:
    headers: dict[str, str]
    body: bytes
    mode: str

    @property
    def event(self) -> dict[str, Any]:
        return dict(json.loads(self.body))

    def verify(self, secret: str) -> dict[str, Any]:
        """The body, if its Standard Webhooks signature verifies with ``secret``."""
        return dict(Verifier(secret).verify(self.body, self.headers))


class Receiver:
    """``mode``: ``ok`` answers 200, ``fail`` 500, ``hang`` never answers (until the
    client gives up, or :meth:`release`)."""

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.mode = "ok"
        self.requests: list[Received] = []
        self._server: asyncio.Server | None = None
        self._released = asyncio.Event()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    async def start(self) -> Receiver:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)
        return self

    async def stop(self) -> None:
        self.release()
        if self._server is not None:
            self._server.close()
            self._server = None

    def release(self) -> None:
        self._released.set()

    def ok(self, secret: str | None = None) -> list[Received]:
        """The requests answered 200, in order (each verified with ``secret`` if given)."""
        got = [r for r in self.requests if r.mode == "ok"]
        if secret is not None:
            for r in got:
                r.verify(secret)
        return got

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                line = await reader.readline()
                if not line:
                    return
                headers: dict[str, str] = {}
                while True:
                    h = await reader.readline()
                    if h in (b"\r\n", b""):
                        break
                    name, _, value = h.decode("latin-1").partition(":")
                    headers[name.strip().lower()] = value.strip()
                body = await reader.readexactly(int(headers.get("content-length", "0")))
                mode = self.mode
                self.requests.append(Received(headers, body, mode))
                if mode == "hang":
                    closed = asyncio.ensure_future(reader.read())
                    released = asyncio.ensure_future(self._released.wait())
                    await asyncio.wait({closed, released}, return_when=asyncio.FIRST_COMPLETED)
                    closed.cancel()
                    released.cancel()
                    return
                status = "500 Internal Server Error" if mode == "fail" else "200 OK"
                answer = b"broken" if mode == "fail" else b"thanks"
                writer.write(
                    f"HTTP/1.1 {status}\r\ncontent-length: {len(answer)}\r\n\r\n".encode() + answer
                )
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            return
        finally:
            writer.close()


async def until(condition: Callable[[], Any], within: float = 60.0, what: str = "") -> Any:
    """Wait (generously) for ``condition()`` to be truthy; its value."""
    deadline = time.monotonic() + within
    while True:
        value = condition()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what or condition}")
        await asyncio.sleep(0.05)
