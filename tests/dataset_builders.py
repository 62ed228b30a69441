"""Small datasets and archives built in memory for upload tests (good ones and every kind of bad one)."""

from __future__ import annotations

import io
import tarfile
import zipfile

from PIL import Image


def png(size: int = 16, color: tuple[int, int, int] = (200, 30, 30)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (size, size), color).save(buffer, format="PNG")
    return buffer.getvalue()


def zip_bytes(members: dict[str, bytes], compression: int = zipfile.ZIP_DEFLATED) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buffer.getvalue()


def tar_bytes(
    members: dict[str, bytes], links: dict[str, tuple[bytes, str]] | None = None, gz: bool = False
) -> bytes:
    """links: name -> (tarfile.SYMTYPE or LNKTYPE, target)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz" if gz else "w") as tf:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
        for name, (kind, target) in (links or {}).items():
            info = tarfile.TarInfo(name)
            info.type = kind
            info.linkname = target
            tf.addfile(info)
    return buffer.getvalue()


def good_members() -> dict[str, bytes]:
    """Two classes; names with a space, a dot and non-Latin letters."""
    return {
        "blue jay/1.png": png(color=(0, 0, 200)),
        "blue jay/2.png": png(color=(0, 0, 180)),
        "черный.дрозд/1.png": png(color=(10, 10, 10)),
    }
