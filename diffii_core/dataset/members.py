"""What a format reader hands on: one entry of the source, its safe path and (maybe) its bytes."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

READ_CHUNK = 1 << 20
# Enough of a file for every accepted format's signature (WebP's "RIFF....WEBP" is the longest).
SIGNATURE_BYTES = 16


@dataclass
class Member:
    source_path: str  # NFC POSIX path as found in the source, for reports
    parts: tuple[str, ...]
    is_dir: bool
    data: bytes | None = None  # read only for image-suffix files that can belong to a class (full load)
    head: bytes | None = None  # the first SIGNATURE_BYTES of such a file (structural check)
    skip_reason: str | None = None  # set by a reader for an entry it leaves out (reported, not used)


class Readable(Protocol):
    def read(self, n: int = -1, /) -> bytes: ...


def read_capped(fp: Readable, limit: int) -> bytes | None:
    """Up to ``limit`` bytes of ``fp``; None once the stream proves longer (reads limit + 1 at most)."""
    chunks: list[bytes] = []
    total = 0
    while True:
        chunk = fp.read(min(READ_CHUNK, limit + 1 - total))
        if not chunk:
            return b"".join(chunks)
        total += len(chunk)
        if total > limit:
            return None
        chunks.append(chunk)


def read_head(fp: Readable) -> bytes:
    """The first SIGNATURE_BYTES of a stream (fewer if it is shorter)."""
    head = b""
    while len(head) < SIGNATURE_BYTES:
        chunk = fp.read(SIGNATURE_BYTES - len(head))
        if not chunk:
            break
        head += chunk
    return head
