"""Test-only fault injection, installed around the production worker from outside it.

Run a worker as `celery -A tests.fault_worker worker ...` with DIFFII_TEST_FAULTS set to rules
separated by ";" (the production settings know nothing of them):

- `fail:<stage>:<class name or *>`  every attempt of that stage raises RuntimeError (a bug-like error)
- `flaky:<stage>:<n>`               the first n attempts of each shard of that stage raise
                                    ConnectionError (a transient error), later ones run normally
- `delay:<stage>:<seconds>`         sleep after each stored image (generate), so a test can act
                                    while a shard is surely mid-way
- `simulate:generate:<seconds>`     no model: each image is a fixed sleep and a placeholder PNG, so
                                    a benchmark measures the control plane (bench/service.py --scale)
- `simulate:learn:<seconds>`        no model: each optimiser step a fixed sleep, in the worker's
                                    slices (the shard's start is the checkpoint); no concepts stored
"""

from __future__ import annotations

import functools
import os
import re
import time
from collections.abc import Callable
from typing import Any

from services.worker import stages
from services.worker.celery_app import app
from services.worker.context import ShardContext

RULE = re.compile(r"^(fail|flaky|delay|simulate):(prepare|learn|generate|package):(.+)$")


def parse(spec: str) -> list[tuple[str, str, str]]:
    rules = []
    for text in filter(None, (r.strip() for r in spec.split(";"))):
        match = RULE.match(text)
        if match is None:
            raise ValueError(f"DIFFII_TEST_FAULTS rule {text!r} is not action:stage:argument")
        rules.append((match[1], match[2], match[3]))
    return rules


class _SlowStorage:
    """Delegates to the real storage; sleeps after each image's metadata (the image's last write)."""

    def __init__(self, inner: Any, seconds: float) -> None:
        self._inner, self._seconds = inner, seconds

    def put_bytes(self, key: str, data: bytes, content_type: str | None = None) -> None:
        self._inner.put_bytes(key, data, content_type)
        if "/images/" in key and key.endswith(".json"):
            time.sleep(self._seconds)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


def _wrap(stage: str, run: Callable[[ShardContext], list[str]], rules: list[tuple[str, str, str]]) -> Any:
    mine = [(action, arg) for action, s, arg in rules if s == stage]

    @functools.wraps(run)
    def faulty(ctx: ShardContext) -> list[str]:
        label = ctx.claim.class_name
        for action, arg in mine:
            if action == "fail" and arg in ("*", label):
                raise RuntimeError(f"injected failure ({stage} {label})")
            if action == "flaky" and ctx.claim.attempt <= int(arg):
                raise ConnectionError(f"injected transient failure ({stage} attempt {ctx.claim.attempt})")
            if action == "delay":
                ctx.storage = _SlowStorage(ctx.storage, float(arg))
            if action == "simulate" and stage == "generate":
                return _simulated_generate(ctx, float(arg))
            if action == "simulate" and stage == "learn":
                return _simulated_learn(ctx, float(arg))
        return run(ctx)

    return faulty


# A 1x1 grey PNG: what a simulated image stores.
PLACEHOLDER_PNG = bytes.fromhex(
    "89504e470d0a1a0a0000000d49484452000000010000000108000000003a7e9b55"
    "0000000a49444154789c636800000082008177cd72b60000000049454e44ae426082"
)


def _simulated_generate(ctx: ShardContext, seconds: float) -> list[str]:
    import json

    from services.common import keys
    from services.common.lifecycle import shards

    c = ctx.claim
    assert c.class_index is not None
    ctx.images_done = 0
    for index in range(c.start, c.stop):
        time.sleep(seconds)  # the forward passes of one image
        ctx.storage.put_bytes(keys.image_png(c.job_id, c.class_index, index), PLACEHOLDER_PNG, "image/png")
        meta = {"file_name": f"{c.class_name}/c{c.class_index}-{index}.png", "label": c.class_name}
        ctx.storage.put_bytes(keys.image_meta(c.job_id, c.class_index, index), json.dumps(meta).encode())
        ctx.images_done += 1
        if ctx.should_stop():
            ctx.raise_if_stopped()
    with ctx.session() as s:
        return shards.finish_generate(s, c, time.monotonic() - ctx.started)


def _simulated_learn(ctx: ShardContext, seconds: float) -> list[str]:
    """Steps [start, stop) of the claim, sliced and handed back as the real learn stage does."""
    from services.common.lifecycle import shards
    from services.worker.context import StopRequested

    c = ctx.claim
    ends = stages.slice_over(ctx)
    step, ctx.images_done = c.start, 0
    while step < c.stop:
        time.sleep(seconds)  # one optimiser step
        step += 1
        ctx.images_done = step - c.start
        if ctx.should_stop():
            ctx.raise_if_stopped()
        if step < c.stop and ends is not None and ends(step):
            with ctx.session() as s:
                ready = shards.next_slice(s, c, step, time.monotonic() - ctx.started)
                if ready is None:
                    raise StopRequested(c.job_id)
                return ready
    return stages.finish_learning(ctx, c.job_id)


def install(spec: str) -> None:
    rules = parse(spec)
    for kind, run in list(stages.STAGES.items()):
        stages.STAGES[kind] = _wrap(kind.value, run, rules)


install(os.environ.get("DIFFII_TEST_FAULTS", ""))

__all__ = ["app"]
