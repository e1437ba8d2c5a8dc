import math

import numpy as np
import pytest
import torch

from dragnext.geometry import RegionDrag, eta, sample
from dragnext.resize import resize_mask, scale_point, working_size
from tests.conftest import disc


def drag(kind, mask, handle, target, center=None):
    t = lambda p: None if p is None else torch.tensor(p, dtype=torch.float64)
    return RegionDrag(kind, torch.from_numpy(mask), t(handle), t(target), t(center))


@pytest.mark.parametrize("T,T_prime,K", [(38, 33, 10), (6, 5, 3), (10, 10, 1)])
def test_eta_is_monotone_and_reaches_one_exactly_at_the_last_iteration(T, T_prime, K):
    values = [eta(t, k, T, T_prime, K) for t in range(T, T_prime - 1, -1) for k in range(1, K + 1)]
    assert all(b > a for a, b in zip(values, values[1:], strict=False))
    assert values[-1] == 1.0
    assert values[0] == pytest.approx(1 / (K * (T - T_prime + 1)))
    assert eta(T_prime, K, T, T_prime, K) == 1.0


def test_an_early_eta_schedule_reaches_one_at_the_stated_step_and_holds_it():
    T, T_prime, K = 38, 33, 10  # 6 PBSI steps
    values = {(t, k): eta(t, k, T, T_prime, K, steps=3) for t in range(T, T_prime - 1, -1)
              for k in range(1, K + 1)}
    assert values[(36, K - 1)] < 1.0 and values[(36, K)] == 1.0  # the last iteration of step 3
    assert all(v == 1.0 for (t, _), v in values.items() if t < 36)
    assert values[(38, 1)] == pytest.approx(1 / 30)
    assert eta(36, K, T, T_prime, K, steps=None) == pytest.approx(0.5)  # the paper's: halfway


def test_an_eta_schedule_longer_than_pbsi_spans_all_of_it():
    T, T_prime, K = 38, 35, 5  # 4 PBSI steps
    for t in range(T, T_prime - 1, -1):
        for k in range(1, K + 1):
            assert eta(t, k, T, T_prime, K, steps=6) == eta(t, k, T, T_prime, K)
    assert eta(T_prime, K, T, T_prime, K, steps=6) == 1.0  # the object still arrives


def test_rotating_by_theta_then_minus_theta_is_the_identity():
    mask = np.zeros((32, 32), dtype=bool)
    mask[5:9, 5:20] = True
    d = drag("rotate", mask, (19, 7), (12, 20), center=(12, 12))
    points = torch.rand(100, 2, dtype=torch.float64) * 32
    for progress in (0.0, 0.3, 1.0):
        assert torch.allclose(d.inverse(progress, d.forward(progress, points)), points, atol=1e-9)
        assert torch.allclose(d.forward(progress, d.inverse(progress, points)), points, atol=1e-9)


def test_rotate_moves_the_handle_onto_the_ray_through_the_target():
    mask = np.ones((32, 32), dtype=bool)
    d = drag("rotate", mask, (20, 10), (10, 4), center=(10, 10))
    moved = d.forward(1.0, d.handle) - d.center
    towards = d.target - d.center
    assert float(moved[0] * towards[1] - moved[1] * towards[0]) == pytest.approx(0, abs=1e-9)
    assert float(moved @ towards) > 0
    assert d.theta == pytest.approx(-math.pi / 2)  # right to up, with y pointing down


def test_target_region_of_a_translated_disc_is_the_shifted_disc():
    handle = disc(48, 64, 20, 20, 6)
    d = drag("translate", handle, (20, 20), (31, 27))
    expected = disc(48, 64, 31, 27, 6)
    assert torch.equal(d.target_region(1.0), torch.from_numpy(expected))
    assert torch.equal(d.target_region(0.0), torch.from_numpy(handle))


def test_a_square_rotated_90_degrees_about_its_centre_maps_onto_itself():
    square = np.zeros((32, 32), dtype=bool)
    square[10:17, 12:19] = True  # 7x7, centre pixel (15, 13)
    d = drag("rotate", square, (18, 13), (15, 16), center=(15, 13))
    assert d.theta == pytest.approx(math.pi / 2)
    assert torch.equal(d.target_region(1.0), torch.from_numpy(square))
    assert not torch.equal(d.target_region(0.5), torch.from_numpy(square))  # 45° is not


def test_correspondence_of_a_translate_samples_the_handle_pixel():
    features = torch.randn(1, 5, 24, 32)
    d = drag("translate", np.ones((24, 32), dtype=bool), (7, 5), (19, 11))
    sampled = sample(features, d.correspondence(1.0))
    assert torch.allclose(sampled[0, :, 11, 19], features[0, :, 5, 7], atol=1e-5)
    halfway = sample(features, d.correspondence(0.5))
    assert torch.allclose(halfway[0, :, 8, 13], features[0, :, 5, 7], atol=1e-5)


def test_correspondence_of_a_rotate_samples_the_rotated_source():
    features = torch.randn(1, 3, 32, 32)
    d = drag("rotate", np.ones((32, 32), dtype=bool), (20, 10), (10, 20), center=(10, 10))
    sampled = sample(features, d.correspondence(1.0))
    # rotating (20, 10) by 90° about (10, 10) gives (10, 20)
    assert torch.allclose(sampled[0, :, 20, 10], features[0, :, 10, 20], atol=1e-5)


def test_drags_move_between_resolutions_with_their_points_and_masks():
    handle = disc(64, 64, 31.5, 31.5, 8)
    d = drag("translate", handle, (31.5, 31.5), (47.5, 31.5)).at((32, 32))
    assert d.size == (32, 32)
    assert d.handle.tolist() == [15.5, 15.5] and d.target.tolist() == [23.5, 15.5]
    assert abs(int(d.handle_mask.sum()) - handle.sum() / 4) < 12


def test_points_scale_with_pixel_centres():
    p = torch.tensor([0.0, 0.0], dtype=torch.float64)
    assert scale_point(p, (10, 10), (20, 20)).tolist() == [0.5, 0.5]
    assert scale_point(scale_point(p, (10, 10), (20, 30)), (20, 30), (10, 10)).tolist() == [0, 0]


def test_working_size_keeps_the_longer_side_and_the_multiple():
    assert working_size(682, 512, 512, 64) == (384, 512)  # DragBench 512x682: 3:4 kept
    assert working_size(128, 96, 64, 16) == (48, 64)
    assert working_size(10, 1000, 512, 64) == (512, 64)  # never below one multiple


def test_a_small_region_survives_downsampling():
    mask = torch.zeros(64, 64, dtype=torch.bool)
    mask[10, 10] = True
    small = resize_mask(mask, (8, 8))
    assert small.sum() == 1 and small[1, 1]


@pytest.mark.parametrize("axis,handle,target", [("uniform", (30, 20), (42, 20)),
                                                 ("uniform", (22, 26), (20, 32)),
                                                 ("free", (30, 26), (36, 23))])
def test_a_scale_is_the_identity_at_zero_takes_the_handle_to_the_target_and_inverts(axis, handle, target):
    mask = disc(48, 64, 24, 20, 6)
    d = RegionDrag("scale", torch.from_numpy(mask), *(torch.tensor(p, dtype=torch.float64)
                                                     for p in (handle, target, (24, 20))), axis=axis)
    points = torch.rand(100, 2, dtype=torch.float64) * 48
    assert torch.allclose(d.forward(0.0, points), points, atol=1e-12)
    assert torch.allclose(d.forward(1.0, d.handle), d.target, atol=1e-9)
    assert torch.allclose(d.forward(0.7, d.center), d.center)
    for progress in (0.0, 0.4, 1.0):
        assert torch.allclose(d.inverse(progress, d.forward(progress, points)), points, atol=1e-9)


def test_a_free_scale_stretches_each_axis_by_its_own_factor():
    mask = np.ones((32, 32), dtype=bool)
    d = drag("scale", mask, (20, 10), (26, 12), center=(10, 14))
    d = RegionDrag(d.type, d.handle_mask, d.handle, d.target, d.center, axis="free")
    assert d.factor == pytest.approx((1.6, 0.5))
    assert d.forward(0.5, torch.tensor([20.0, 18.0], dtype=torch.float64)).tolist() == \
        pytest.approx([10 + 10 * 1.3, 14 + 4 * 0.75])


@pytest.mark.parametrize("s", [0.6, 1.5])
def test_the_target_region_of_a_scaled_disc_is_the_scaled_disc(s):
    r = 10
    mask = disc(64, 64, 32, 30, r)
    d = drag("scale", mask, (32 + r, 30), (32 + s * r, 30), center=(32, 30))
    rho = d.target_region(1.0).numpy()
    assert rho.sum() / mask.sum() == pytest.approx(s * s, rel=0.05)
    ys, xs = np.nonzero(rho)
    assert (xs.mean(), ys.mean()) == pytest.approx((32, 30), abs=0.3)
    assert torch.equal(d.target_region(0.0), torch.from_numpy(mask))


def test_a_scale_keeps_its_factor_at_every_resolution():
    mask = disc(96, 128, 40, 40, 10)
    # off the ray: only the distance counts, and a non-square resize would change the ratio
    d = drag("scale", mask, (50, 40), (40, 52), center=(40, 40))
    assert d.factor == pytest.approx((1.2, 1.2))
    assert d.at((12, 12)).factor == d.factor


def test_an_anchored_deform_stretches_a_bar_and_keeps_its_anchor():
    bar = np.zeros((32, 64), dtype=bool)
    bar[14:18, 10:30] = True  # x 10..29
    d = drag("deform", bar, (29, 16), (41, 16), center=(10, 16))  # the far end stays: 20 → 32 px
    points = torch.rand(200, 2, dtype=torch.float64) * torch.tensor([64.0, 32.0])
    for progress in (0.0, 0.5, 1.0):
        assert torch.allclose(d.inverse(progress, d.forward(progress, points)), points, atol=1e-9)
    assert torch.allclose(d.forward(1.0, d.handle), d.target)
    assert torch.allclose(d.forward(1.0, d.center), d.center)
    assert torch.allclose(d.forward(1.0, torch.tensor([19.5, 16.0], dtype=torch.float64)),
                          torch.tensor([19.5 + 6, 16.0], dtype=torch.float64))  # halfway: half of 12 px
    rho = d.target_region(1.0).numpy()
    columns = np.nonzero(rho.any(axis=0))[0]
    assert columns.min() == 10 and columns.max() in (41, 42) and rho[14:18, 10:41].all()
    plain = drag("deform", bar, (29, 16), (41, 16)).target_region(1.0).numpy()
    assert not plain[:, 10:22].any()  # the paper's deform map moves the handle region rigidly
