"""Random circle interpolation between two inversions of one class (Diff-II, paper Eq. 5)."""

from __future__ import annotations

import math

import torch

# Below this sin(theta) the two latents are (nearly) parallel: the great circle through them is not
# defined, and the published fp16 code divided by ~0 and produced NaN.
MIN_SIN_THETA = 1e-6


def angle(z1: torch.Tensor, z2: torch.Tensor) -> float:
    """theta = arccos(<z1, z2> / (|z1| |z2|)) over the whole flattened latent, in float64."""
    a, b = z1.reshape(-1).double(), z2.reshape(-1).double()
    denom = float(a.norm() * b.norm())
    if denom == 0.0:
        return 0.0
    return math.acos(max(-1.0, min(1.0, float(a @ b) / denom)))


def circle_interpolate(z1: torch.Tensor, z2: torch.Tensor, phi: float) -> torch.Tensor:
    """z = (sin(theta + phi) z1 - sin(phi) z2) / sin(theta), in fp32 (math in fp64).

    phi in [0, 2*pi): phi = 0 gives z1, phi = 2*pi - theta gives z2; phi in [0, 2*pi - theta) walks the
    long arc (extrapolation), the rest the short arc between them (interpolation)."""
    theta = angle(z1, z2)
    sin_theta = math.sin(theta)
    if abs(sin_theta) < MIN_SIN_THETA:
        return z1.float().clone()
    a = math.sin(theta + phi) / sin_theta
    b = -math.sin(phi) / sin_theta
    return (a * z1.double() + b * z2.double()).float()


def is_interpolation(phi: float, theta: float) -> bool:
    """Whether phi lies on the short arc between z1 and z2 (else it extrapolates along the long arc)."""
    return 2 * math.pi - theta <= phi < 2 * math.pi


def pair_from_index(k: int, n: int) -> tuple[int, int]:
    """The k-th unordered pair (i < j) of n items, k in [0, n(n-1)/2).
    Uniform draws of k give uniform pairs."""
    i = 0
    while k >= n - 1 - i:
        k -= n - 1 - i
        i += 1
    return i, i + 1 + k
