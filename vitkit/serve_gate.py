"""The front of ``vitkit serve``: an ASGI middleware that serves the upload page at ``GET /`` and checks every
``POST /predict`` before it reaches the model's workers.

A request carries one image, as ``multipart/form-data`` (field ``image``) or JSON ``{"image": "<base64>"}``;
``?explain=1`` (or ``"explain": true``) asks for the attention overlay. Anything else is answered here with a 4xx
and ``{"detail": "<one line>"}``: an empty or oversized body (413), another content type (415), a body that is not
an image, a truncated one (400), an image over the pixel limit (413). What passes goes on as JSON
``{"image": base64, "explain": bool}``, decoded again by the worker.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

from PIL import Image

#: Largest request body accepted, in bytes.
MAX_BYTES = 20 * 1024 * 1024
#: Largest image accepted, in pixels (width x height).
MAX_PIXELS = 40_000_000

#: The upload page served at ``GET /``.
PAGE = Path(__file__).with_name("serve_page.html")


class BadRequest(Exception):
    """A request the server answers itself: HTTP ``status`` and a one-line ``reason``."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status, self.reason = status, reason


def checked_image(data: bytes, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """Decode ``data`` fully into an upright RGB image; :class:`BadRequest` when it is not one or is too large."""
    from vitkit.data.images import load_image

    if not data:
        raise BadRequest(400, "the image is empty: send the bytes of a JPEG, PNG, WebP, BMP, TIFF or GIF file.")
    try:
        with Image.open(io.BytesIO(data)) as probe:
            width, height = probe.size
    except Image.DecompressionBombError:
        raise BadRequest(
            413, f"the image is far over the {max_pixels / 1e6:.0f} megapixel limit: send it resized."
        ) from None
    except Exception as err:
        raise BadRequest(
            400, f"not an image ({type(err).__name__}): send a JPEG, PNG, WebP, BMP, TIFF or GIF file."
        ) from None
    if width * height > max_pixels:
        raise BadRequest(413, f"the image is {width}x{height} ({width * height / 1e6:.0f} megapixels); the limit is "
                              f"{max_pixels / 1e6:.0f}: send it resized.")  # fmt: skip
    try:
        return load_image(io.BytesIO(data))
    except Exception as err:
        reason = " ".join(str(err).split())[:120] or type(err).__name__
        raise BadRequest(400, f"the image cannot be decoded ({reason}): is the file complete?") from None


async def normalised(content_type: str, body: bytes, query: str) -> dict[str, Any]:
    """The request's image and explain flag as the workers take them; :class:`BadRequest` when it is unusable."""
    explain = parse_qs(query).get("explain", ["0"])[-1].lower() in ("1", "true", "yes")
    if not body:
        raise BadRequest(400, "empty body: send an image as multipart/form-data (field 'image') or JSON "
                              '{"image": "<base64>"}.')  # fmt: skip
    kind = content_type.split(";")[0].strip().lower()
    if kind == "multipart/form-data":
        data = await _form_file(content_type, body)
    elif kind == "application/json":
        try:
            payload = json.loads(body)
            encoded = payload["image"]
            data = base64.b64decode(encoded.split(",")[-1], validate=True)  # a data: URL's prefix is dropped
            explain = explain or bool(payload.get("explain", False))
        except (ValueError, KeyError, TypeError, AttributeError, binascii.Error):
            raise BadRequest(400, 'the JSON body must be {"image": "<base64 of the image file>"}.') from None
    else:
        raise BadRequest(415, f"content type {kind or 'none'!r}: send multipart/form-data (field 'image') or "
                              "application/json.")  # fmt: skip
    from starlette.concurrency import run_in_threadpool

    await run_in_threadpool(checked_image, data)  # decoding blocks: not on the event loop
    return {"image": base64.b64encode(data).decode(), "explain": explain}


async def _form_file(content_type: str, body: bytes) -> bytes:
    from starlette.requests import Request

    async def replay() -> dict[str, Any]:
        return {"type": "http.request", "body": body, "more_body": False}

    scope = {"type": "http", "method": "POST", "headers": [(b"content-type", content_type.encode())]}
    try:
        form = await Request(scope, replay).form()
    except Exception:
        raise BadRequest(400, "the multipart body cannot be parsed: send one file in the field 'image'.") from None
    upload = form.get("image")
    if upload is None or isinstance(upload, str):
        raise BadRequest(400, "no file in the form field 'image'.")
    return await upload.read()


class RequestGate:
    """ASGI middleware: ``GET /`` is the page; ``POST /predict`` is checked and normalised (see the module)."""

    def __init__(self, app: Callable, page: str, max_bytes: int = MAX_BYTES) -> None:
        self.app, self.page, self.max_bytes = app, page.encode(), max_bytes

    async def __call__(self, scope: dict, receive: Callable[[], Awaitable[dict]], send: Callable) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        if scope["method"] == "GET" and scope["path"] == "/":
            return await _respond(send, 200, self.page, "text/html; charset=utf-8")
        if scope["method"] != "POST" or scope["path"] != "/predict":
            return await self.app(scope, receive, send)
        headers = {k.decode().lower(): v.decode() for k, v in scope["headers"]}
        try:
            if int(headers.get("content-length") or 0) > self.max_bytes:
                raise BadRequest(413, f"the body is over {self.max_bytes // 2**20} MB: send a smaller image.")
            body = await _read_body(receive, self.max_bytes)
            payload = await normalised(headers.get("content-type", ""), body, scope.get("query_string", b"").decode())
        except BadRequest as bad:
            return await _respond(send, bad.status, json.dumps({"detail": bad.reason}).encode(), "application/json")
        data = json.dumps(payload).encode()
        kept = [(k, v) for k, v in scope["headers"] if k.lower() not in (b"content-type", b"content-length")]
        scope = {**scope, "headers": [*kept, (b"content-type", b"application/json"),
                                      (b"content-length", str(len(data)).encode())]}  # fmt: skip

        async def replay() -> dict[str, Any]:
            return {"type": "http.request", "body": data, "more_body": False}

        return await self.app(scope, replay, send)


async def _read_body(receive: Callable[[], Awaitable[dict]], limit: int) -> bytes:
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise BadRequest(400, "the client went away before sending the whole body.")
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise BadRequest(413, f"the body is over {limit // 2**20} MB: send a smaller image.")
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


async def _respond(send: Callable, status: int, body: bytes, content_type: str) -> None:
    headers = [(b"content-type", content_type.encode()), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
