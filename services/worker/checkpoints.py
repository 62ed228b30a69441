"""Concept learning's checkpoints, kept in storage as well: another worker resumes a long run after the
one running it dies."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from services.common import keys
from services.worker.context import ShardContext


def restore(ctx: ShardContext, job_id: str) -> Path:
    """The local checkpoint folder, holding whatever an earlier attempt stored."""
    folder = ctx.process.job_dir(job_id) / "checkpoint"
    folder.mkdir(parents=True, exist_ok=True)
    for key in ctx.storage.list(keys.checkpoint_prefix(job_id)):
        ctx.storage.download_file(key, folder / key.rsplit("/", 1)[-1])
    return folder


def uploader(ctx: ShardContext, job_id: str, folder: Path, every: int) -> Callable[[int, int], None]:
    """Learning's progress callback: every `every` steps (the last aside) the folder goes to storage."""

    def progress(step: int, total: int) -> None:
        if step % every == 0 and step < total:
            for path in folder.iterdir():
                if path.is_file() and not path.name.startswith("."):
                    ctx.storage.put_bytes(keys.checkpoint_prefix(job_id) + path.name, path.read_bytes())

    return progress
