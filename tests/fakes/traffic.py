"""Byte counting and upload drops shared by the cloud test servers: what each sandbox received on the wire, what it
sent back as file content, and a fault that drops the connection of an upload after N bytes.

Why on the wire: a client may send bodies gzip-compressed (`Content-Encoding: gzip`), which aiohttp undoes before a
handler sees them, so counting in the handlers would report the uncompressed size. Every byte a connection receives
passes through aiohttp's `RequestHandler.data_received`; that is wrapped once to count per connection, and each
request is charged with what its connection received from its start to its end (clients here send one request at a
time on a connection, so nothing of the next request is charged to this one).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from aiohttp import web, web_protocol

# Bytes received so far per connection (keyed by the id of aiohttp's protocol object, which has no room for an
# attribute), and how many of them were already charged to a request.
_received: dict[int, int] = {}
_charged: dict[int, int] = {}
_closed: set[int] = set()


def install() -> None:
    """Wraps aiohttp's connection handler to count received bytes; idempotent."""
    handler = web_protocol.RequestHandler
    if getattr(handler, "_traffic_installed", False):
        return
    original_data_received = handler.data_received
    original_connection_lost = handler.connection_lost

    def data_received(self, data: bytes) -> None:
        _received[id(self)] = _received.get(id(self), 0) + len(data)
        original_data_received(self, data)

    def connection_lost(self, exc) -> None:
        # The request of a dropped connection is charged after this (its handler ends later), so the counts stay
        # until then; `charge` forgets a closed connection's.
        _closed.add(id(self))
        original_connection_lost(self, exc)

    handler.data_received = data_received
    handler.connection_lost = connection_lost
    handler._traffic_installed = True


def request_bytes_so_far(request: web.Request) -> int:
    """What the request's connection received since the request began (headers and body, compressed or not)."""
    key = id(request.protocol)
    return _received.get(key, 0) - _charged.get(key, 0)


def charge(request: web.Request) -> int:
    """Marks everything the connection received so far as this request's and answers how much that was."""
    key = id(request.protocol)
    received = _received.get(key, 0)
    amount = received - _charged.get(key, 0)
    _charged[key] = received
    if key in _closed:
        # Ids are reused once an object is gone: a closed connection's counts must not pass to a new one.
        _closed.discard(key)
        _received.pop(key, None)
        _charged.pop(key, None)
    return max(amount, 0)


@dataclass
class Counters:
    """Per sandbox: bytes received on the wire for it, and file content bytes sent from it (downloads)."""

    received: dict = field(default_factory=dict)
    sent: dict = field(default_factory=dict)

    def add_received(self, sandbox_id: Optional[str], amount: int) -> None:
        if sandbox_id:
            self.received[sandbox_id] = self.received.get(sandbox_id, 0) + amount

    def add_sent(self, sandbox_id: Optional[str], amount: int) -> None:
        if sandbox_id:
            self.sent[sandbox_id] = self.sent.get(sandbox_id, 0) + amount

    def to_json(self, sandbox_id: str) -> dict:
        return {"bytesReceived": self.received.get(sandbox_id, 0), "bytesSent": self.sent.get(sandbox_id, 0)}


@dataclass
class UploadDrop:
    """`dropUploadAfterBytes`/`dropUploadCount`: uploads (file writes) are counted together from when the fault is
    set, and the connection of the one that crosses N bytes is dropped mid-body; then counting starts again, until
    the count is used up. A count of 0 or less stands for a network that stays down: after the first drop, every
    upload is dropped at its first piece until the fault is cleared."""

    after_bytes: Optional[int] = None
    count: int = 0
    seen: int = 0
    forever: bool = False

    def apply(self, body: dict) -> None:
        if "dropUploadAfterBytes" in body:
            value = body["dropUploadAfterBytes"]
            self.after_bytes = int(value) if value is not None else None
            self.count = int(body.get("dropUploadCount", 1))
            self.forever = self.count <= 0
            self.count = max(self.count, 1)
            self.seen = 0

    def to_json(self) -> dict:
        return {"dropUploadAfterBytes": self.after_bytes, "dropUploadCount": 0 if self.forever else self.count}

    def check(self, request: web.Request) -> None:
        """Drops the connection when this upload crosses the limit; call it after each piece of the body is read."""
        if self.after_bytes is None or self.count <= 0:
            return
        if self.seen + request_bytes_so_far(request) < self.after_bytes:
            return
        self.seen = 0
        if self.forever:
            self.after_bytes = 0
        else:
            self.count -= 1
            if self.count <= 0:
                self.after_bytes = None
        request["upload_dropped"] = True
        if request.transport is not None:
            request.transport.abort()
        raise ConnectionResetError("upload dropped by the dropUploadAfterBytes fault")

    def finished(self, request: web.Request, amount: int) -> None:
        """Counts a whole upload that was not dropped towards the next drop."""
        if self.after_bytes is not None and not request.get("upload_dropped"):
            self.seen += amount


async def read_checked(reader, request: web.Request, drop: Optional[UploadDrop], size: int = 64 * 1024) -> bytes:
    """Reads a multipart part (`read_chunk`) or a request body (`content.read`) to its end, checking the drop
    fault after every piece, so a drop lands in the middle of a body as a dropped connection would."""
    pieces = []
    while True:
        if hasattr(reader, "read_chunk"):
            piece = await reader.read_chunk(size)
        else:
            piece = await reader.read(size)
        if not piece:
            break
        pieces.append(piece)
        if drop is not None:
            try:
                drop.check(request)
            except ConnectionResetError as error:
                # envd writes as it reads, so a dropped upload leaves the start of its file; the caller writes it.
                error.partial = b"".join(pieces)
                raise
    return b"".join(pieces)
