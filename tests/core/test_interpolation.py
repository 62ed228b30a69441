import math

import pytest
import torch

from diffii_core.inversion.interpolation import angle, circle_interpolate, is_interpolation, pair_from_index


@pytest.fixture
def pair() -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    return torch.randn(4, 8, 8, generator=gen), torch.randn(4, 8, 8, generator=gen)


def test_phi_zero_gives_z1_and_two_pi_minus_theta_gives_z2(pair):
    z1, z2 = pair
    theta = angle(z1, z2)
    assert torch.allclose(circle_interpolate(z1, z2, 0.0), z1, atol=1e-5)
    assert torch.allclose(circle_interpolate(z1, z2, 2 * math.pi - theta), z2, atol=1e-5)


@pytest.mark.parametrize("phi", [0.3, 1.7, 3.0, 4.4, 6.1])
def test_result_lies_in_the_span_of_z1_and_z2(pair, phi):
    z1, z2 = pair
    z = circle_interpolate(z1, z2, phi).reshape(-1).double()
    basis = torch.stack([z1.reshape(-1), z2.reshape(-1)], dim=1).double()
    coeffs = torch.linalg.lstsq(basis, z[:, None]).solution
    residual = (basis @ coeffs).squeeze(1) - z
    assert residual.norm() / z.norm() < 1e-6


@pytest.mark.parametrize("phi", [0.1, 1.0, 2.5, 3.9, 5.5])
def test_norm_is_kept_when_the_norms_are_equal(pair, phi):
    z1, z2 = pair
    z2 = z2 * (z1.norm() / z2.norm())
    assert circle_interpolate(z1, z2, phi).norm() == pytest.approx(float(z1.norm()), rel=1e-5)


def test_identical_and_near_identical_inputs_give_no_nan(pair):
    z1, _ = pair
    assert torch.equal(circle_interpolate(z1, z1.clone(), 2.0), z1)  # duplicate images: no circle, keep z1
    for other in (z1 + 1e-7, z1.half().float()):
        for phi in (0.5, 2.0, 5.0):
            out = circle_interpolate(z1, other, phi)
            assert torch.isfinite(out).all()
            assert out.norm() == pytest.approx(float(z1.norm()), rel=5e-2)  # bounded, not blown up


def test_phi_range_splits_into_extrapolation_and_interpolation(pair):
    z1, z2 = pair
    z2 = z2 * (z1.norm() / z2.norm())
    theta = angle(z1, z2)
    assert 0 < theta < math.pi
    # The long arc [0, 2*pi - theta) leaves the segment's cone; the short arc stays between z1 and z2.
    assert not is_interpolation(0.0, theta)
    assert not is_interpolation(2 * math.pi - theta - 1e-6, theta)
    assert is_interpolation(2 * math.pi - theta, theta)
    assert is_interpolation(2 * math.pi - theta / 2, theta)
    mid = circle_interpolate(z1, z2, 2 * math.pi - theta / 2)
    assert angle(mid, z1) == pytest.approx(theta / 2, abs=1e-4)
    assert angle(mid, z2) == pytest.approx(theta / 2, abs=1e-4)
    far = circle_interpolate(z1, z2, math.pi - theta / 2)  # opposite the midpoint on the long arc
    assert angle(far, z1) > theta and angle(far, z2) > theta


def test_pairs_are_every_unordered_pair_once():
    n = 6
    pairs = [pair_from_index(k, n) for k in range(n * (n - 1) // 2)]
    assert len(set(pairs)) == len(pairs) == 15
    assert all(0 <= i < j < n for i, j in pairs)
