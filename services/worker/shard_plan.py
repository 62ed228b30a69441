"""Which shards a job runs, as its prepare stage creates them: a learn shard for a method that learns
concepts, each class's images in generate shards of at most `shard_size`, one package shard.

A learn shard covers optimiser steps [start, stop) (stop: the job's concept steps); its images_done
counts the steps it has done. It is the first slice: each slice that ends early creates the next
(`shards.next_slice`), starting at the step it reached."""

from __future__ import annotations

import math
from typing import Any

from services.common.lifecycle import shards
from services.common.lifecycle.table import Actor
from services.common.manifest import ClassEntry
from services.common.models import JobStatus, Shard, ShardKind


def split_ranges(total: int, shard_size: int) -> list[tuple[int, int]]:
    """[start, stop) ranges of at most shard_size images, as even as possible."""
    if total <= 0:
        return []
    parts = math.ceil(total / shard_size)
    bounds = [round(i * total / parts) for i in range(parts + 1)]
    return [(bounds[i], bounds[i + 1]) for i in range(parts)]


def job_shards(
    job_id: str, plans: list[ClassEntry], *, learns: bool, shard_size: int, max_attempts: int, seed: int,
    learn_steps: int = 0,
) -> tuple[list[Shard], JobStatus, ShardKind]:  # fmt: skip
    """(the shard rows after prepare, the job's next status, the kind of shard that runs first)."""
    rows: list[Shard] = []

    def add(kind: ShardKind, **values: Any) -> None:
        rows.append(
            shards.new_shard(
                Actor.worker, job_id=job_id, seq=len(rows) + 1, kind=kind, max_attempts=max_attempts,
                seed=seed, **values,
            )
        )  # fmt: skip

    if learns:
        add(ShardKind.learn, start=0, stop=learn_steps)
    for p in plans:
        for start, stop in split_ranges(p.generated, shard_size):
            add(
                ShardKind.generate,
                class_index=p.index,
                class_name=p.name,
                start=start,
                stop=stop,
                images_total=stop - start,
            )
    add(ShardKind.package, images_total=sum(p.generated for p in plans))

    if learns:
        return rows, JobStatus.learning, ShardKind.learn
    if any(r.kind == ShardKind.generate for r in rows):
        return rows, JobStatus.generating, ShardKind.generate
    return rows, JobStatus.packaging, ShardKind.package
