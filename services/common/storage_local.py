"""The local-folder object store (embedded default).

Every write goes to a temp file under `<root>/.tmp` (same filesystem) and is renamed into place,
so a reader sees either the old object or the whole new one, never a half-written file.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import BinaryIO

from diffii_core.atomic import atomic_path, atomic_write
from services.common.signing import signed_object_url
from services.common.storage_base import (
    CHUNK_BYTES,
    ObjectNotFound,
    ObjectTooLarge,
    StorageError,
    validate_key,
    validate_prefix,
)

TMP_DIR = ".tmp"


class LocalStorage:
    def __init__(
        self, root: Path, *, public_base_url: str | None = None, signing_secret: str | None = None
    ) -> None:
        self.root = Path(root).expanduser().resolve()
        self.public_base_url = public_base_url
        self.signing_secret = signing_secret

    # -- paths -------------------------------------------------------------------------------------

    def path_for(self, key: str) -> Path:
        """The file of a key; refuses keys that would resolve outside the root (e.g. via symlinks)."""
        validate_key(key)
        path = self.root / key
        resolved = path.resolve()
        if resolved != self.root and self.root not in resolved.parents:
            raise StorageError(f"object key {key!r} resolves outside the store")
        return path

    def _tmp_dir(self) -> Path:
        tmp = self.root / TMP_DIR
        tmp.mkdir(parents=True, exist_ok=True)
        return tmp

    def _atomic(self, key: str) -> AbstractContextManager[BinaryIO]:
        # Temp files live under TMP_DIR, which no listing walks, so a crash leaves no visible object.
        return atomic_write(self.path_for(key), tmp_dir=self._tmp_dir(), durable=True)

    # -- Storage -----------------------------------------------------------------------------------

    def put_bytes(self, key: str, data: bytes, content_type: str | None = None) -> None:
        with self._atomic(key) as handle:
            handle.write(data)

    def upload_stream(self, key: str, fileobj: BinaryIO, max_bytes: int | None = None) -> int:
        total = 0
        with self._atomic(key) as handle:
            while chunk := fileobj.read(CHUNK_BYTES):
                total += len(chunk)
                if max_bytes is not None and total > max_bytes:
                    raise ObjectTooLarge(key, max_bytes)
                handle.write(chunk)
        return total

    @contextmanager
    def open_writer(self, key: str) -> Iterator[BinaryIO]:
        with self._atomic(key) as handle:
            yield handle

    def get_bytes(self, key: str) -> bytes:
        try:
            return self.path_for(key).read_bytes()
        except (FileNotFoundError, IsADirectoryError):
            raise ObjectNotFound(key) from None

    def download_file(self, key: str, path: Path) -> None:
        source = self.path_for(key)
        if not source.is_file():
            raise ObjectNotFound(key)
        with atomic_path(path) as tmp:
            shutil.copyfile(source, tmp)

    def exists(self, key: str) -> bool:
        return self.path_for(key).is_file()

    def list(self, prefix: str) -> list[str]:
        # Walk only the folder the prefix names, not the whole store.
        folder = prefix.rsplit("/", 1)[0] if "/" in prefix else ""
        start = self.root / folder if folder else self.root
        if not start.is_dir():
            return []
        keys = []
        for dirpath, dirnames, filenames in os.walk(start):
            if Path(dirpath) == self.root:
                dirnames[:] = [d for d in dirnames if d != TMP_DIR]
            for name in filenames:
                key = (Path(dirpath) / name).relative_to(self.root).as_posix()
                if key.startswith(prefix):
                    keys.append(key)
        return sorted(keys)

    def delete(self, key: str) -> None:
        path = self.path_for(key)
        path.unlink(missing_ok=True)
        self._prune_empty_dirs(path.parent)

    def delete_prefix(self, prefix: str) -> None:
        validate_prefix(prefix)
        for key in self.list(prefix):
            path = self.path_for(key)
            path.unlink(missing_ok=True)
            self._prune_empty_dirs(path.parent)

    def _prune_empty_dirs(self, folder: Path) -> None:
        # A deleted dataset or job leaves no empty folders behind.
        while folder != self.root and self.root in folder.parents:
            try:
                folder.rmdir()
            except OSError:
                return
            folder = folder.parent

    def presigned_url(self, key: str, expires: int = 300, filename: str | None = None) -> str:
        validate_key(key)
        if not self.public_base_url or not self.signing_secret:
            raise StorageError("local storage can sign download links only inside the API (no base URL)")
        return signed_object_url(self.public_base_url, self.signing_secret, key, expires, filename)

    def check(self) -> None:
        try:
            fd, name = tempfile.mkstemp(dir=self._tmp_dir(), prefix="probe-")
            os.close(fd)
            os.unlink(name)
        except OSError as exc:
            raise StorageError(f"local storage at {self.root} is not writable: {exc}") from exc

    def ensure(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self._tmp_dir()
