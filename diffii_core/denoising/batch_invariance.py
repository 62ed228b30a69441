"""Make a network's per-row results independent of how many rows share the call.

CPU GEMM kernels switch algorithm for small row counts (1 to 11 rows here: the time-embedding MLP and
every ResNet time projection see one row per image), and convolutions switch for a batch of one. The
last bits then differ with the batch size, and a different bit at step 1 is a different pixel at step
25. Linear layers below MIN_ROWS rows are padded up to it, group norms always read NCHW-contiguous
input (convolutions return channels-last for some batch sizes, and group norm sums those in another
order), and callers never run a batch of one."""

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


class LayoutStableGroupNorm(nn.GroupNorm):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.group_norm(x.contiguous(), self.num_groups, self.weight, self.bias, self.eps)


def stabilize(module: nn.Module) -> nn.Module:
    """Swap the plain Linear and GroupNorm layers inside `module` for the stable ones (same parameters)."""
    swaps = {nn.Linear: RowStableLinear, nn.GroupNorm: LayoutStableGroupNorm}
    for child in module.modules():
        if type(child) in swaps:
            child.__class__ = swaps[type(child)]
    return module
