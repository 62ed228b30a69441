"""Seeds derived from (job seed, class, image index), so no result depends on batching or workers."""

import hashlib

import torch


def derive_seed(job_seed: int, *parts: object) -> int:
    """A 63-bit seed from the job seed and any labels (class name, image index, purpose)."""
    text = "\x1f".join([str(job_seed), *(str(p) for p in parts)])
    return int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "big") >> 1


def generator(job_seed: int, *parts: object) -> torch.Generator:
    """A CPU generator: CPU streams are the same on every device, so a GPU worker draws the same numbers."""
    return torch.Generator(device="cpu").manual_seed(derive_seed(job_seed, *parts))
