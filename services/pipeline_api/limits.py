"""Guards on request bodies, before any route reads them: size, content type, JSON."""

from __future__ import annotations

import contextlib
import json

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from services.pipeline_api.errors import error_response


class _TooLarge(Exception):
    pass


class BodySizeLimitMiddleware:
    """413 for a body over ``max_bytes``, whether announced by Content-Length or streamed."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    def _too_large(self) -> object:
        return error_response(
            413,
            "payload_too_large",
            f"request body is larger than {self.max_bytes} bytes",
            {"limit_bytes": self.max_bytes},
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope["headers"]:
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = 0
                if declared > self.max_bytes:
                    await self._too_large()(scope, receive, send)  # type: ignore[operator]
                    return
        seen = 0
        started = False
        exceeded = False

        async def limited_receive() -> Message:
            nonlocal seen, exceeded
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    exceeded = True
                    raise _TooLarge
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if exceeded and not started:
                # The app may have caught _TooLarge (FastAPI turns any failure while
                # reading the body into a 400); its answer is replaced by the 413.
                return
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        with contextlib.suppress(_TooLarge):
            await self.app(scope, limited_receive, tracking_send)
        if exceeded and not started:
            await self._too_large()(scope, receive, send)  # type: ignore[operator]


async def read_body(receive: Receive) -> bytes | None:
    """The whole request body (None when the client went away first)."""
    body = bytearray()
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        body.extend(message.get("body", b""))
        if not message.get("more_body"):
            return bytes(body)


def replaying(body: bytes, receive: Receive) -> Receive:
    """A ``receive`` that hands the app ``body`` (already read), then what follows."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if sent:
            return await receive()
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return replay


BODY_METHODS = ("POST", "PATCH", "PUT", "DELETE")
JSON_TYPES = ("application/json",)
CSV_TYPES = ("text/csv", "application/csv")


def _media_type(scope: Scope) -> str:
    for name, value in scope["headers"]:
        if name == b"content-type":
            media: str = value.decode("latin-1").split(";", 1)[0].strip().lower()
            return media
    return ""


class RequestBodyMiddleware:
    """One answer per kind of bad body, before any route sees it.

    Command bodies under ``/v1`` are JSON: another content type is 415, and JSON that does
    not parse (truncated, not UTF-8, nested too deeply) is 422 ``invalid_json``. Routes in
    ``csv_paths`` take CSV instead and check it themselves.
    """

    def __init__(self, app: ASGIApp, csv_paths: tuple[str, ...] = ()) -> None:
        self.app = app
        self.csv_paths = csv_paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] != "http"
            or scope["method"] not in BODY_METHODS
            or not scope["path"].startswith("/v1/")
        ):
            await self.app(scope, receive, send)
            return
        body = await read_body(receive)
        if body is None:
            return
        problem = self._problem(scope, body)
        if problem is not None:
            await problem(scope, receive, send)  # type: ignore[operator]
            return
        await self.app(scope, replaying(body, receive), send)

    def _problem(self, scope: Scope, body: bytes) -> object | None:
        if not body.strip():
            return None
        media = _media_type(scope)
        csv_route = scope["path"] in self.csv_paths
        if not csv_route and (media in JSON_TYPES or media.endswith("+json")):
            try:
                json.loads(body)
            except json.JSONDecodeError as exc:
                return _invalid_json(f"{exc.msg} at position {exc.pos}")
            except UnicodeDecodeError:
                return _invalid_json("it is not UTF-8 text")
            except (ValueError, RecursionError):
                return _invalid_json("it is nested too deeply")
            return None
        if csv_route and media in CSV_TYPES:
            return None
        expected = "text/csv" if csv_route else "application/json"
        return error_response(
            415,
            "unsupported_media_type",
            f"send the body as {expected} (Content-Type: {expected}), not {media or 'untyped'}",
            {"field": "Content-Type", "content_type": media or None},
        )


def _invalid_json(reason: str) -> object:
    return error_response(
        422, "invalid_json", f"the body is not valid JSON: {reason}", {"field": "body"}
    )
