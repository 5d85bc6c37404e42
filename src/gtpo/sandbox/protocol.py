"""Message framing between the pool and a session process: 4-byte big-endian length, then UTF-8 JSON.

JSON and never pickle: the session process runs untrusted code in-process, so anything it sends may be
forged, and the pool must be able to read it without executing it. Reads on the pool side have a deadline
and a size cap, so a session that sends garbage or nothing costs a timeout, never a hang or an exception
other than ``ProtocolError``/``TimeoutError``. Standard library only: the zygote imports this module.
"""

from __future__ import annotations

import json
import math
import select
import socket
import time
from typing import Any

HEADER_BYTES = 4
MAX_MESSAGE_BYTES = 4 * 1024 * 1024
"""Largest message either side accepts: far above a cell's code or a reply (tracebacks are capped)."""
MAX_ERROR_CHARS = 2000
"""Cap of the traceback text in a reply; the session shortens longer ones in the middle."""


def output_cap_bytes(max_output_chars: int) -> int:
    """Bytes of output a cell may write before the rest is only counted: a character is at most 4 bytes."""
    return 4 * max_output_chars + 4


class ProtocolError(Exception):
    """The peer closed the connection or sent something that is not a well-formed message."""


def encode_message(obj: Any) -> bytes:
    """Frame ``obj``; ASCII-escaped JSON, so even a string with lone surrogates encodes."""
    body = json.dumps(obj).encode("ascii")
    return len(body).to_bytes(HEADER_BYTES, "big") + body


def send_message(sock: socket.socket, obj: Any, timeout_s: float | None = None) -> None:
    send_frame(sock, encode_message(obj), timeout_s)


def send_frame(sock: socket.socket, frame: bytes, timeout_s: float | None = None) -> None:
    """Send an encoded message; ``timeout_s`` bounds a peer that stops reading (then ``TimeoutError``)."""
    sock.settimeout(timeout_s)
    try:
        sock.sendall(frame)
    except TimeoutError as e:
        raise TimeoutError("peer stopped reading") from e
    except OSError as e:
        raise ProtocolError(f"send failed: {e}") from e


def _recv_exact(sock: socket.socket, n: int, deadline: float | None) -> bytes:
    chunks: list[bytes] = []
    remaining = n
    poller = select.poll()  # not select.select: a pool with many sessions has descriptors past 1024
    poller.register(sock, select.POLLIN)
    while remaining:
        if deadline is not None:
            wait_ms = (deadline - time.monotonic()) * 1000
            if wait_ms <= 0 or not poller.poll(math.ceil(wait_ms)):
                raise TimeoutError("no reply before the deadline")
        try:
            chunk = sock.recv(min(remaining, 1 << 20))
        except OSError as e:
            raise ProtocolError(f"receive failed: {e}") from e
        if not chunk:
            raise ProtocolError("connection closed")
        chunks.append(chunk)
        remaining -= len(chunk)
    return b"".join(chunks)


def recv_message(sock: socket.socket, deadline: float | None = None) -> Any:
    """Read one framed message; ``deadline`` is a ``time.monotonic()`` instant (None: wait forever)."""
    sock.settimeout(None)
    size = int.from_bytes(_recv_exact(sock, HEADER_BYTES, deadline), "big")
    if size > MAX_MESSAGE_BYTES:
        raise ProtocolError(f"message of {size} bytes exceeds the {MAX_MESSAGE_BYTES}-byte limit")
    body = _recv_exact(sock, size, deadline)
    try:
        return json.loads(body.decode("utf-8"))
    except (ValueError, RecursionError) as e:  # ValueError: bad UTF-8 or JSON, an int past 4300 digits
        # RecursionError: ``[[[...]]]`` nested 10^5 deep, which a cell can write to its socket itself
        raise ProtocolError(f"malformed message: {type(e).__name__}: {str(e)[:200]}") from e
