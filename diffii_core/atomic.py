"""Write a file so that readers see the old one or the whole new one, never a part.

The bytes go to a temp file on the same filesystem (next to the target, or in a given folder of the
same store), which is renamed onto the target only when the block exits without an exception; on an
exception, or a crash, the target is untouched and the temp file is removed (or, after a crash, left
under a dot-name that no reader lists).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO


@contextmanager
def atomic_path(target: str | Path, *, tmp_dir: str | Path | None = None) -> Iterator[Path]:
    """A fresh temp path to write (by any means) in place of ``target``; renamed onto it on success."""
    target = Path(target)
    folder = Path(tmp_dir) if tmp_dir is not None else target.parent
    folder.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=folder, prefix=f".{target.name[:100]}.", suffix=".part")
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


@contextmanager
def atomic_write(
    target: str | Path, *, tmp_dir: str | Path | None = None, durable: bool = False
) -> Iterator[BinaryIO]:
    """A binary handle whose bytes replace ``target`` when the block exits cleanly.

    ``durable`` flushes the bytes to disk before the rename, so a power cut cannot leave the new
    name pointing at an empty file (objects in a store need it; scratch files do not).
    """
    with atomic_path(target, tmp_dir=tmp_dir) as tmp, tmp.open("wb") as handle:
        yield handle
        if durable:
            handle.flush()
            os.fsync(handle.fileno())
