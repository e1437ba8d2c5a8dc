"""PBSI wiring with a stand-in for the UNet whose features are the latent itself.

A latent holding a block of ones in the handle region is optimised: the block must arrive
in the target region, and a strip of the target that lies outside the editable mask must
stay as it was (only the λ term protects it). The sabotage tests break one piece at a time
and show the same checks then fail.
"""

import pytest
import torch

import dragnext.pbsi
from dragnext.config import PbsiConfig
from dragnext.geometry import RegionDrag
from dragnext.pbsi import pbsi
from tests.scenes import SIZE, as_features, flat_schedule, latent_as_features, point


def run(kind: str, lam: float = 0.1, progressive: bool = True, forward=latent_as_features, **options):
    """Optimise; return (z_{T'−1}, pixels that must have arrived, protected strip, M)."""
    handle = torch.zeros(SIZE, dtype=torch.bool)
    goal = torch.zeros(SIZE, dtype=torch.bool)  # written out by hand, not by the code under test
    if kind == "translate":
        handle[5:10, 2:7] = True
        goal[5:10, 8:13] = True
        d = RegionDrag("translate", handle, point(4, 7), point(10, 7))
    elif kind == "rotate":
        handle[7:9, 4:12] = True  # a bar through the centre (7.5, 7.5), turned upright
        goal[4:12, 7:9] = True
        d = RegionDrag("rotate", handle, point(11, 7.5), point(7.5, 11), center=point(7.5, 7.5))
    else:
        handle[6:10, 6:10] = True  # a 4x4 block about (7.5, 7.5), grown to 6x6
        goal[5:11, 5:11] = True
        d = RegionDrag("scale", handle, point(9.5, 7.5), point(10.5, 7.5), center=point(7.5, 7.5))
    last_rows = torch.arange(SIZE[0])[:, None] >= {"translate": 9, "rotate": 11, "scale": 10}[kind]
    strip = goal & ~handle & last_rows
    editable = (handle | goal) & ~strip  # part of the target lies outside M: only λ guards it
    z = handle.float().expand(1, 4, *SIZE).clone()
    steps, T = 6, 8
    config = PbsiConfig(steps=steps, iterations=10, lr=0.1, lam=lam, progressive=progressive, **options)
    out = pbsi([z] * (T + 1), [[d]], [editable], flat_schedule(T), config, forward)
    return out[0], goal & editable & ~handle, strip, editable


def succeeded(out, arrived, strip, editable) -> bool:
    outside = ~editable & ~strip
    return bool(
        out[:, arrived].mean() > 0.85
        and out[:, arrived].min() > 0.4  # the far edge enters ρ(η) only as η reaches 1
        and out[:, strip].abs().max() < 0.35
        and out[:, outside].abs().max() < 0.35
    )


@pytest.mark.parametrize("kind", ["translate", "rotate"])
def test_the_handle_block_arrives_in_the_target_and_the_background_holds(kind):
    out, arrived, strip, editable = run(kind)
    assert strip.any() and arrived.sum() >= 10
    assert succeeded(out, arrived, strip, editable), (
        f"arrived mean {out[:, arrived].mean():.2f} min {out[:, arrived].min():.2f}, "
        f"strip max {out[:, strip].abs().max():.2f}")


@pytest.mark.parametrize("kind", ["translate", "rotate"])
def test_without_the_lambda_term_the_protected_strip_changes(kind):
    out, arrived, strip, editable = run(kind, lam=0.0)
    assert out[:, strip].mean() > 0.5
    assert not succeeded(out, arrived, strip, editable)


def test_a_scaled_block_grows_into_its_target_and_the_background_holds(monkeypatch):
    out, arrived, strip, editable = run("scale")
    # even an exact result is 5/6 on the grown block's outer ring: Π samples it 1/6 px off the
    # handle's edge, so the bar is lower than for translate
    assert out[:, arrived].mean() > 0.75 and out[:, arrived].min() > 0.5
    assert out[:, strip].abs().max() < 0.35 and out[:, ~editable & ~strip].abs().max() < 0.35
    monkeypatch.setattr(dragnext.pbsi, "eta", lambda *args: 0.0)
    assert run("scale")[0][:, arrived].mean() < 0.1


def features_without_gradient(z: torch.Tensor, t: int):
    return torch.zeros_like(z), as_features(z.detach())


@pytest.mark.parametrize("sabotage", ["eta_stuck_at_zero", "identity_correspondence",
                                      "handle_as_target_region", "no_feature_gradient"])
def test_breaking_one_piece_fails_the_check(sabotage, monkeypatch):
    forward = latent_as_features
    if sabotage == "eta_stuck_at_zero":
        monkeypatch.setattr(dragnext.pbsi, "eta", lambda *args: 0.0)
    elif sabotage == "identity_correspondence":
        correspondence = RegionDrag.correspondence
        monkeypatch.setattr(RegionDrag, "correspondence", lambda self, e: correspondence(self, 0.0))
    elif sabotage == "handle_as_target_region":
        monkeypatch.setattr(RegionDrag, "target_region", lambda self, e: self.handle_mask)
    else:
        forward = features_without_gradient
    for kind in ("translate", "rotate"):
        assert not succeeded(*run(kind, forward=forward)), kind


def test_without_intermediate_states_the_region_still_moves():
    """η = 1 throughout (the paper's ablation) is a valid mode, not a broken one."""
    assert succeeded(*run("translate", progressive=False))


def orientation_blind(z: torch.Tensor, t: int):
    """Features that hold where there is content but not its shape: each pixel sees the mean
    over a 7x7 window (an object spanning a cell or two of a coarse feature map)."""
    blurred = torch.nn.functional.avg_pool2d(z, 7, stride=1, padding=3, count_include_pad=False)
    return torch.zeros_like(z), as_features(blurred)


def test_the_x0_loss_turns_a_bar_that_blurred_features_cannot_see_turn():
    """With ᾱ = 1 and ε = 0, x̂₀ is z itself: the x0 term sees the bar's orientation."""
    assert not succeeded(*run("rotate", forward=orientation_blind))
    assert succeeded(*run("rotate", forward=orientation_blind, loss="x0"))
    assert succeeded(*run("rotate", forward=orientation_blind, loss="both"))


def test_a_start_latent_replaces_z_T():
    """With a negligible step size PBSI returns its start: `z_init` when given."""
    z = torch.zeros(1, 4, *SIZE)
    start = torch.randn(1, 4, *SIZE)
    d = RegionDrag("translate", torch.ones(SIZE, dtype=torch.bool), point(4, 7), point(6, 7))
    config = PbsiConfig(steps=1, iterations=1, lr=1e-12)
    editable = [torch.ones(SIZE, dtype=torch.bool)]
    args = ([z] * 3, [[d]], editable, flat_schedule(2), config, latent_as_features)
    assert torch.allclose(pbsi(*args, z_init=start), start)
    assert torch.allclose(pbsi(*args), z)


def test_pbsi_follows_the_early_eta_schedule(monkeypatch):
    seen = []
    real = dragnext.pbsi.eta
    monkeypatch.setattr(dragnext.pbsi, "eta", lambda *args: seen.append(real(*args)) or seen[-1])
    assert succeeded(*run("translate", eta_steps=2))
    K = 10
    assert seen[2 * K - 2] < 1.0 and seen[2 * K - 1:] == [1.0] * (len(seen) - 2 * K + 1)


def test_fill_in_completes_a_hole_from_its_surroundings():
    from dragnext.pbsi import fill_in

    x = torch.linspace(0, 1, 16).expand(1, 2, 16, 16).clone()  # a left-to-right ramp
    known = torch.ones(SIZE, dtype=torch.bool)
    known[4:12, 5:11] = False
    x[..., ~known] = 9.0  # an object where the hole is
    filled = fill_in(x, known)
    assert torch.equal(filled[..., known], x[..., known])
    assert filled[..., ~known].min() >= x[0, 0, 0, 4] and filled[..., ~known].max() <= x[0, 0, 0, 11]
    assert torch.equal(fill_in(x, torch.zeros(SIZE, dtype=torch.bool)), x)


def test_vacate_fill_clears_the_old_pose_that_keep_leaves():
    """With η = 1 throughout no region term reaches the translated block's old place (the
    whole handle region): it stays at 1 unless the vacated term pulls it to the background
    (0) around it. The block still arrives, with or without intermediate states."""
    handle = torch.zeros(SIZE, dtype=torch.bool)
    handle[5:10, 2:7] = True
    kept, *_ = run("translate", progressive=False)
    assert kept[:, handle].min() > 0.95
    for progressive in (False, True):
        cleared, arrived, strip, editable = run("translate", progressive=progressive, vacate="fill")
        assert cleared[:, handle].abs().max() < 0.1
        assert succeeded(cleared, arrived, strip, editable)


def test_the_keep_term_holds_a_neighbour_that_the_region_term_drags_along():
    """Blurred features couple ρ to the pixels around it, so the region term also moves a
    neighbouring block inside M (outside the handle and target regions). The keep term,
    on x̂₀ (z itself here), holds it; the block still arrives."""
    handle, goal, neighbour = (torch.zeros(SIZE, dtype=torch.bool) for _ in range(3))
    handle[5:10, 2:7], goal[5:10, 8:13], neighbour[12:15, 4:11] = True, True, True
    editable = torch.zeros(SIZE, dtype=torch.bool)
    editable[2:16, 0:15] = True
    d = RegionDrag("translate", handle, point(4, 7), point(10, 7))
    z = (handle.float() - 0.7 * neighbour.float()).expand(1, 4, *SIZE).clone()

    def drift_and_arrival(keep_weight):
        config = PbsiConfig(steps=6, iterations=10, lr=0.1, loss="features", keep_weight=keep_weight)
        out = pbsi([z] * 9, [[d]], [editable], flat_schedule(8), config, orientation_blind)[0]
        return float((out - z[0])[:, neighbour].abs().max()), float(out[:, goal & ~handle].mean())

    free, _ = drift_and_arrival(0.0)
    held, arrived = drift_and_arrival(1.0)
    assert free > 0.25 and held < 0.1 and arrived > 0.6  # blurred features alone reach about 0.62


@pytest.mark.parametrize("reference, value", [("predicted", 0.3), ("clean", 1.0)])
def test_the_x0_terms_aim_at_the_reference_they_are_given(reference, value):
    """The inverted states hold a faint block (0.3) where the input's latent z_0 holds a
    sharp one (1.0); with ᾱ = 1 and ε = 0, x̂₀ is z. The moved block takes the value of the
    chosen reference, and the keep term holds a neighbour at that reference's value too."""
    handle, goal, neighbour = (torch.zeros(SIZE, dtype=torch.bool) for _ in range(3))
    handle[5:10, 2:7], goal[5:10, 8:13], neighbour[12:15, 4:11] = True, True, True
    d = RegionDrag("translate", handle, point(4, 7), point(10, 7))
    shapes = (handle | neighbour).float().expand(1, 4, *SIZE)
    trajectory = [shapes.clone()] + [0.3 * shapes] * 8
    config = PbsiConfig(steps=6, iterations=10, lr=0.1, loss="x0", keep_weight=1.0, x0_reference=reference)
    out = pbsi(trajectory, [[d]], [torch.ones(SIZE, dtype=torch.bool)], flat_schedule(8), config,
               latent_as_features)[0]
    assert out[:, goal & ~handle].mean() == pytest.approx(value, abs=0.1)
    assert out[:, neighbour].mean() == pytest.approx(value, abs=0.1)


def test_keep_path_leaves_no_trail_behind_a_long_drag():
    """A block dragged 10 px passes through the cells between: the region term fills each
    as ρ(η) reaches it, and nothing empties it after, so without `keep_path` a trail stays.
    With it, the cells the block has left are held to the reference (0) again; the block
    still arrives and its old place is cleared (`vacate=fill`)."""
    handle, goal = (torch.zeros(SIZE, dtype=torch.bool) for _ in range(2))
    handle[5:10, 1:4], goal[5:10, 11:14] = True, True
    between = torch.zeros(SIZE, dtype=torch.bool)
    between[5:10, 5:10] = True
    d = RegionDrag("translate", handle, point(2, 7), point(12, 7))
    z = handle.float().expand(1, 4, *SIZE).clone()

    def trail_and_arrival(keep_path):
        config = PbsiConfig(steps=6, iterations=10, lr=0.1, loss="features", vacate="fill",
                            keep_weight=1.0, keep_path=keep_path)
        out = pbsi([z] * 9, [[d]], [torch.ones(SIZE, dtype=torch.bool)], flat_schedule(8), config,
                   latent_as_features)[0]
        return float(out[:, between].mean()), float(out[:, goal].mean()), float(out[:, handle].abs().max())

    trail, arrived, left = trail_and_arrival(False)
    assert trail > 0.4 and arrived > 0.75 and left < 0.15
    held, arrived_held, left = trail_and_arrival(True)
    assert held < 0.15 and arrived_held > arrived - 0.02 and left < 0.15
