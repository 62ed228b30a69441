"""Make a network's per-row results independent of how many rows share the call.

CPU GEMM kernels switch algorithm for small row counts (1 to 11 rows here: the time-embedding MLP and
every ResNet time projection see one row per image), and convolutions switch for a batch of one. The
last bits then differ with the batch size, and a different bit at step 1 is a different pixel at step
25. Linear layers below MIN_ROWS rows are padded up to it, group norms always read NCHW-contiguous
input (convolutions return channels-last for some batch sizes, and group norm sums those in another
order), and callers never run a batch of one. On CPUs with AVX-512 and AMX, a 1x1 convolution's kernel
also changes between batches below and above 16 images, so pointwise convolutions run as a linear layer
over the pixels (one row a pixel), whose rows are stable like the attention projections'."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

MIN_ROWS = 16


def row_stable_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    rows = x.numel() // x.shape[-1] if x.shape[-1] else 0
    if rows >= MIN_ROWS or rows == 0:
        return F.linear(x, weight, bias)
    flat = x.reshape(rows, x.shape[-1])
    padded = torch.cat([flat, flat[:1].expand(MIN_ROWS - rows, -1)])
    out = F.linear(padded, weight, bias)[:rows]
    return out.reshape(*x.shape[:-1], out.shape[-1])


class RowStableLinear(nn.Linear):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return row_stable_linear(x, self.weight, self.bias)


class RowStablePointwiseConv2d(nn.Conv2d):
    """A 1x1 convolution (stride 1, no padding, one group) as a linear layer over the pixels."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.weight.reshape(self.out_channels, self.in_channels)
        out = row_stable_linear(x.permute(0, 2, 3, 1), weight, self.bias)
        return out.permute(0, 3, 1, 2).contiguous()


def _pointwise(conv: nn.Conv2d) -> bool:
    return (
        conv.kernel_size == (1, 1) and conv.stride == (1, 1) and conv.padding in ((0, 0), "valid")
        and conv.dilation == (1, 1) and conv.groups == 1 and conv.padding_mode == "zeros"
    )  # fmt: skip


class LayoutStableGroupNorm(nn.GroupNorm):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.group_norm(x.contiguous(), self.num_groups, self.weight, self.bias, self.eps)


def stabilize(module: nn.Module) -> nn.Module:
    """Swap the plain Linear, GroupNorm and 1x1 Conv2d layers inside `module` for the stable ones (same
    parameters)."""
    swaps = {nn.Linear: RowStableLinear, nn.GroupNorm: LayoutStableGroupNorm}
    for child in module.modules():
        if type(child) in swaps:
            child.__class__ = swaps[type(child)]
        elif type(child) is nn.Conv2d and _pointwise(child):
            child.__class__ = RowStablePointwiseConv2d
    return module
