"""Folder members: a depth-first walk that follows no link out of the tree and opens no FIFO."""

from __future__ import annotations

import os
import stat
import unicodedata
from pathlib import Path
from typing import Literal

from diffii_core.dataset.limits import Budget
from diffii_core.dataset.members import Member, read_head
from diffii_core.dataset.names import fix_undecodable, is_noise, wants_bytes
from diffii_core.errors import DatasetError


def folder_members(root: Path, budget: Budget, content: Literal["data", "head"]) -> list[Member]:
    label = budget.label
    try:
        root_real = root.resolve(strict=True)
    except OSError as exc:
        raise DatasetError(f"folder {label!r} cannot be read: {exc.strerror or exc}") from None
    members: list[Member] = []
    # Depth-first with sorted names, on an explicit stack: deep trees must not hit the recursion limit.
    stack: list[tuple[Path, tuple[str, ...]]] = [(root_real, ())]
    while stack:
        directory, prefix = stack.pop()
        try:
            with os.scandir(directory) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as exc:
            shown = "/".join(prefix) or "."
            raise DatasetError(f"folder {label!r}: cannot list {shown!r}: {exc.strerror or exc}") from None
        subdirs: list[tuple[Path, tuple[str, ...]]] = []
        for entry in entries:
            parts = (*prefix, unicodedata.normalize("NFC", fix_undecodable(entry.name)))
            if is_noise(parts):
                continue
            budget.add_members()
            rel = "/".join(parts)
            target, linked, st = _stat(entry, root_real, label, rel)
            if stat.S_ISDIR(st.st_mode):
                if linked:
                    # Following would read images twice (under two classes) or loop for ever.
                    reason = "symbolic link to a folder inside the dataset, not followed"
                    members.append(Member(rel, parts, is_dir=False, skip_reason=reason))
                    continue
                members.append(Member(rel, parts, is_dir=True))
                subdirs.append((target, parts))
            elif stat.S_ISREG(st.st_mode):
                budget.add_file(rel, st.st_size)
                members.append(_file_member(target, rel, parts, budget, content))
            else:
                # Opening a FIFO would block for ever; devices are never dataset content.
                raise DatasetError(
                    f"folder {label!r}: {rel!r} is a device, FIFO or socket, not a file or folder"
                )
        stack.extend(reversed(subdirs))
    return members


def _stat(
    entry: os.DirEntry[str], root_real: Path, label: str, rel: str
) -> tuple[Path, bool, os.stat_result]:
    """The entry's target (a link resolved, and refused when it leaves the root), whether it was a link,
    and the target's stat."""
    target = Path(entry.path)
    try:
        linked = entry.is_symlink()
        if linked:
            target = target.resolve()
            if target != root_real and root_real not in target.parents:
                raise DatasetError(
                    f"folder {label!r}: {rel!r} is a symbolic link pointing outside the dataset "
                    "folder; links must stay inside it"
                )
        st = target.stat() if linked else entry.stat(follow_symlinks=False)
    except FileNotFoundError:
        raise DatasetError(f"folder {label!r}: {rel!r} is a broken symbolic link") from None
    except OSError as exc:
        raise DatasetError(f"folder {label!r}: cannot read {rel!r}: {exc.strerror or exc}") from None
    return target, linked, st


def _file_member(
    target: Path, rel: str, parts: tuple[str, ...], budget: Budget, content: Literal["data", "head"]
) -> Member:
    if not wants_bytes(parts):
        return Member(rel, parts, is_dir=False)
    try:
        with target.open("rb") as fp:
            if content == "data":
                return Member(rel, parts, is_dir=False, data=budget.read(fp, rel))
            return Member(rel, parts, is_dir=False, head=read_head(fp))
    except OSError as exc:
        raise DatasetError(f"folder {budget.label!r}: cannot read {rel!r}: {exc.strerror or exc}") from None
