"""The peer methods: `warp` and `dragdiffusion`, alone and through `edit()`."""

import pytest
import torch

from dragnext.config import DragDiffusionConfig, build_config
from dragnext.edit import edit
from dragnext.geometry import RegionDrag
from dragnext.peers.dragdiffusion import drag_diffusion
from dragnext.peers.warp import warp_latent
from tests.conftest import FAST
from tests.scenes import SIZE, as_features, flat_schedule, latent_as_features, load_scene, point


def block_translate():
    handle = torch.zeros(SIZE, dtype=torch.bool)
    handle[5:10, 2:7] = True
    z = handle.float().expand(1, 4, *SIZE).clone()
    return z, RegionDrag("translate", handle, point(4, 7), point(10, 7))


def test_warp_moves_the_handle_latent_to_the_target_and_refills_what_it_left():
    z, drag = block_translate()
    warped = warp_latent(z, [drag])
    assert torch.equal(warped[0, :, 5:10, 8:13], torch.ones(4, 5, 5))
    vacated = warped[0, :, 5:10, 2:7]
    assert not torch.equal(vacated, torch.ones_like(vacated))
    assert torch.equal(warped[0, :, 12:], z[0, :, 12:])  # nothing else changes


def test_dragdiffusion_tracks_the_handle_to_the_target_on_a_stand_in():
    z, drag = block_translate()
    T = 4
    config = DragDiffusionConfig(iterations=200, lr=0.1, lam=0.0)
    out = drag_diffusion([z] * (T + 1), [drag], torch.ones(SIZE, dtype=torch.bool), flat_schedule(T),
                         config, latent_as_features)
    moved = out[0, 0]
    assert moved[7, 8:11].mean() > 0.5  # content arrived around the target point
    assert moved[7, 2:4].mean() < 0.5  # and left the start of the handle region


@pytest.mark.parametrize("method", ["warp", "dragdiffusion"])
def test_each_peer_edits_one_item_on_the_tiny_model(tiny_model, scene, method):
    config = build_config(overrides=FAST + [f"method={method}", "dragdiffusion.iterations=3"])
    result = edit(*load_scene(*scene), tiny_model, config)
    assert result.image.size == (128, 96)
    assert result.to_record()["config"]["method"] == method


def test_dragdiffusions_motion_loss_is_the_originals_patch_sum():
    """On features equal to x, one step right changes each of the (2r_m + 1)² patch points by
    1: the original's (2r_m+1)²·l1_loss is 9 for r_m = 1. A handle within 2 px is done."""
    from dragnext.peers.dragdiffusion import _square, motion_supervision

    xs = as_features(torch.arange(16, dtype=torch.float32).expand(1, 3, 16, 16))
    handles, targets = torch.tensor([[5.0, 5.0], [9.0, 9.0]]), torch.tensor([[10.0, 5.0], [10.5, 9.0]])
    loss = motion_supervision(xs, handles, targets, _square(1, "cpu"), reached_px=2.0)
    assert float(loss) == pytest.approx(9.0)
    assert float(motion_supervision(xs, handles, targets, _square(1, "cpu"), reached_px=1.0)) == \
        pytest.approx(18.0)
