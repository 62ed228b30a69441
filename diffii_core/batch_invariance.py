"""Make a network's per-row results independent of how many rows share the call.

CPU GEMM kernels switch algorithm for small row counts (1 to 11 rows here: the time-embedding MLP and
every ResNet time projection see one row per image), and convolutions switch for a batch of one. The
last bits then differ with the batch size, and a different bit at step 1 is a different pixel at step
25. Linear layers below MIN_ROWS rows are padded up to it, and callers never run a batch of one."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

MIN_ROWS = 16


class RowStableLinear(nn.Linear):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.numel() // x.shape[-1] if x.shape[-1] else 0
        if rows >= MIN_ROWS or rows == 0:
            return F.linear(x, self.weight, self.bias)
        flat = x.reshape(rows, x.shape[-1])
        padded = torch.cat([flat, flat[:1].expand(MIN_ROWS - rows, -1)])
        out = F.linear(padded, self.weight, self.bias)[:rows]
        return out.reshape(*x.shape[:-1], out.shape[-1])


def stabilize(module: nn.Module) -> nn.Module:
    """Swap every plain nn.Linear inside `module` for RowStableLinear (same parameters, same state)."""
    for child in module.modules():
        if type(child) is nn.Linear:
            child.__class__ = RowStableLinear
    return module
