"""Concept learning's checkpoints, kept in storage as well: another worker resumes a long run after the
one running it dies, or runs its next slice."""

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


def upload(ctx: ShardContext, job_id: str, folder: Path) -> None:
    """The folder to storage (at a slice's end: the next slice may run on another worker)."""
    for path in folder.iterdir():
        if path.is_file() and not path.name.startswith("."):
            ctx.storage.put_bytes(keys.checkpoint_prefix(job_id) + path.name, path.read_bytes())


def uploader(ctx: ShardContext, job_id: str, folder: Path, every: int) -> Callable[[int, int], None]:
    """Learning's progress callback: every `every` steps (the last aside) the folder goes to storage."""

    def progress(step: int, total: int) -> None:
        if step % every == 0 and step < total:
            upload(ctx, job_id, folder)

    return progress
