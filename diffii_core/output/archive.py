"""The synthetic dataset archive: `<class>/<image id>.png`, then `preview.html`, `metadata.jsonl`, `job.json`.

Written as a stream (no seeks), so it can go straight into a multipart upload, with fixed timestamps so
that the same job gives the same archive bytes."""

from __future__ import annotations

import json
import platform
import zipfile
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, BinaryIO

from diffii_core import __version__
from diffii_core.output.preview import PREVIEW_PAGE, preview_page

if TYPE_CHECKING:  # an annotation only: params reads the methods, whose images this module packs
    from diffii_core.params import JobParams

# Every zip diffii writes (archives, the sample dataset) stamps its members with this time.
FIXED_TIME = (1980, 1, 1, 0, 0, 0)


class _AppendOnly:
    """A target seen as write-only. zipfile patches a member's header in place where it can seek (a
    file) and writes a data descriptor after it where it cannot (an S3 multipart upload); seen this
    way every target gets descriptors, so the command and the service write the same archive bytes."""

    def __init__(self, inner: BinaryIO) -> None:
        self._inner = inner

    def write(self, data: bytes) -> int:
        return self._inner.write(data)

    def flush(self) -> None:
        self._inner.flush()


class ArchiveWriter:
    def __init__(self, fileobj: BinaryIO) -> None:
        self._zip = zipfile.ZipFile(_AppendOnly(fileobj), mode="w", allowZip64=True)  # type: ignore[arg-type]
        self._names: set[str] = set()

    def _write(self, name: str, data: bytes, compress: int) -> None:
        if name in self._names:
            raise ValueError(f"archive already holds {name!r}")
        self._names.add(name)
        info = zipfile.ZipInfo(name, date_time=FIXED_TIME)
        info.compress_type = compress
        info.external_attr = 0o644 << 16
        info.flag_bits |= 0x800  # UTF-8 names, for non-Latin class names
        self._zip.writestr(info, data)

    def add_image(self, file_name: str, png: bytes) -> None:
        self._write(file_name, png, zipfile.ZIP_STORED)  # PNG is compressed already

    def finish(
        self, sheets: dict[str, bytes], metadata_lines: Iterable[dict[str, Any]], job: dict[str, Any]
    ) -> None:
        """Everything after the images, in one fixed order (`preview.html`, `metadata.jsonl`,
        `job.json`), then close: the order belongs to the writer, so every caller's archive has the same
        members in the same places. `sheets`: class name -> preview sheet PNG."""
        self._write(PREVIEW_PAGE, preview_page(sheets), zipfile.ZIP_STORED)
        lines = "".join(
            json.dumps(line, ensure_ascii=False, sort_keys=True) + "\n" for line in metadata_lines
        )
        self._write("metadata.jsonl", lines.encode("utf-8"), zipfile.ZIP_DEFLATED)
        text = json.dumps(job, ensure_ascii=False, indent=2, sort_keys=True) + "\n"
        self._write("job.json", text.encode("utf-8"), zipfile.ZIP_DEFLATED)
        self._zip.close()


def versions() -> dict[str, str]:
    import diffusers
    import peft
    import torch
    import transformers

    return {
        "diffii": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "transformers": transformers.__version__,
        "peft": peft.__version__,
    }


def job_document(
    params: JobParams,
    model: dict[str, str],
    classes: list[dict[str, Any]],
    **extra: Any,
) -> dict[str, Any]:
    """job.json: all parameters, the model name and revision, the class index and the versions.
    `classes`: [{"index", "name", "images" (real), "generated"}]."""
    return {
        "params": params.model_dump(mode="json"),
        "model": model,
        "class_index": {c["name"]: c["index"] for c in classes},
        "classes": classes,
        "versions": versions(),
        **extra,
    }
