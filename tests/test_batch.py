"""`edit_batch`: items edited together equal the same items edited one at a time, and one
item's failure (raised, non-finite, out of memory) is that item's alone."""

import numpy as np
import pytest
import torch
from PIL import Image

import dragnext.stages
from dragnext.config import build_config
from dragnext.edit import edit_batch
from dragnext.graph import STAGES, stage_keys
from dragnext.instruction import EditItem, InvalidItemError
from dragnext.output_check import EditFailed
from tests.conftest import FAST
from tests.scenes import batch_items

# fp32 on the CPU: a batched matmul sums in another order than a batch of one, nothing more.
PIXEL_TOLERANCE = 2  # grey levels (of 255), any pixel


def pixels(result) -> np.ndarray:
    return np.asarray(result.image, dtype=np.int16)


@pytest.mark.parametrize("lora", [False, True])
def test_a_batch_equals_its_items_edited_one_at_a_time(tiny_model, scene, lora):
    config = build_config(overrides=[*FAST, f"lora.enabled={str(lora).lower()}", "runtime.batch_size=8"])
    batch = batch_items(scene)
    together = edit_batch(batch, tiny_model, config)
    alone = [edit_batch([item], tiny_model, config)[0] for item in batch_items(scene)]
    for a, b in zip(together, alone, strict=True):
        assert np.abs(pixels(a) - pixels(b)).max() <= PIXEL_TOLERANCE, a.item.item_id
    squares, wide = together[:4], together[4]
    ids = [c.item.item_id for c in squares]
    assert all(r.batch["size"] == 4 and r.batch["items"] == ids for r in squares)
    assert wide.batch["size"] == 1 and wide.working_size != squares[0].working_size
    assert squares[0].unet_passes["by_stage"]["pbsi"]["forward_samples"] == \
        4 * alone[0].unet_passes["by_stage"]["pbsi"]["forward_samples"]
    assert squares[0].unet_passes["total"]["forward"] == alone[0].unet_passes["total"]["forward"]
    assert squares[0].to_record()["lora"] == ("trained" if lora else "disabled")
    if lora:  # each item has an adapter of its own, equal to the one it trains alone
        for a, b in zip(together[:4], alone[:4], strict=True):
            assert all(torch.allclose(a.lora_weights[k], b.lora_weights[k], atol=1e-5)
                       for k in a.lora_weights)
        assert not torch.equal(*(r.lora_weights[next(iter(r.lora_weights))] for r in together[:2]))


def test_runtime_batch_size_caps_a_batch(tiny_model, scene):
    config = build_config(overrides=[*FAST, "lora.enabled=false", "runtime.batch_size=3"])
    results = edit_batch(batch_items(scene)[:4], tiny_model, config)
    assert [r.batch["size"] for r in results] == [3, 3, 3, 1]


def test_an_item_that_raises_fails_alone_and_its_batch_mates_succeed(tiny_model, scene, monkeypatch):
    config = build_config(overrides=[*FAST, "lora.enabled=false", "runtime.batch_size=4"])
    real = dragnext.stages.region_drags

    def broken(item, size):
        if item.item_id == "rotate-0001":
            raise RuntimeError("this item's drags cannot be placed")
        return real(item, size)

    monkeypatch.setattr(dragnext.stages, "region_drags", broken)
    results = edit_batch(batch_items(scene)[:4], tiny_model, config)
    assert isinstance(results[2], RuntimeError) and "cannot be placed" in str(results[2])
    assert all(not isinstance(r, BaseException) for i, r in enumerate(results) if i != 2)
    # the others still shared their UNet calls: only the failing stage ran one by one
    assert results[0].batch["stage_sizes"]["prepare"] == 1 and results[0].batch["stage_sizes"]["pbsi"] == 3


def test_a_non_finite_item_fails_with_its_own_error_and_the_others_are_unchanged(tiny_model, scene,
                                                                                 monkeypatch):
    config = build_config(overrides=[*FAST, "lora.enabled=false", "runtime.batch_size=4"])
    clean = edit_batch(batch_items(scene)[:4], tiny_model, config)
    real = dragnext.stages.invert

    def diverging(*args, **kwargs):
        trajectory = real(*args, **kwargs)
        trajectory[-1][1] = float("nan")  # the second item's z_T only
        return trajectory

    monkeypatch.setattr(dragnext.stages, "invert", diverging)
    results = edit_batch(batch_items(scene)[:4], tiny_model, config)
    assert isinstance(results[1], EditFailed) and "non-finite" in str(results[1])
    assert "inversion" in str(results[1])
    for i in (0, 2, 3):
        assert np.abs(pixels(results[i]) - pixels(clean[i])).max() <= PIXEL_TOLERANCE


def test_out_of_memory_splits_the_batch_and_retries_the_halves(tiny_model, scene, monkeypatch):
    config = build_config(overrides=[*FAST, "lora.enabled=false", "runtime.batch_size=4"])
    real = dragnext.stages.invert
    tried = []

    def small_memory(schedule, z_0, *args, **kwargs):
        tried.append(z_0.shape[0])
        if z_0.shape[0] > 2:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (faked)")
        return real(schedule, z_0, *args, **kwargs)

    monkeypatch.setattr(dragnext.stages, "invert", small_memory)
    results = edit_batch(batch_items(scene)[:4], tiny_model, config)
    assert tried == [4, 2, 2]
    assert all(r.batch["stage_sizes"]["inversion"] == 2 for r in results)
    assert all(r.batch["stage_sizes"]["pbsi"] == 4 for r in results)


def test_invalid_input_is_found_before_batching(tiny_model, scene):
    config = build_config(overrides=[*FAST, "lora.enabled=false", "runtime.batch_size=4"])
    batch = batch_items(scene)[:3]
    tiny = EditItem(Image.new("RGB", (8, 8)), batch[0].instruction, "tiny")
    results = edit_batch([batch[0], tiny, *batch[1:]], tiny_model, config)
    assert isinstance(results[1], InvalidItemError)
    assert [r.batch["size"] for i, r in enumerate(results) if i != 1] == [3, 3, 3]


def test_a_stage_key_changes_with_exactly_what_the_stage_reads(scene):
    item = batch_items(scene)[0]
    base = build_config(overrides=FAST)
    keys = stage_keys(item, base, "model@1")
    assert set(keys) == set(STAGES)

    def changed(*overrides, fingerprint="model@1") -> set[str]:
        other = stage_keys(item, build_config(base.to_record(), list(overrides)), fingerprint)
        return {s for s in STAGES if other[s] != keys[s]}

    assert changed("attention.mutual=false") == {"denoise", "decode"}
    assert changed("pbsi.lr=0.03") == {"pbsi", "denoise", "decode"}
    assert changed("dragdiffusion.lr=0.03") == {"pbsi", "denoise", "decode"}
    assert changed("lora.rank=4") == {"lora", "inversion", "pbsi", "denoise", "decode"}
    assert changed("output.paste_background=false") == {"decode"}  # the default keeps the input outside M
    assert changed("output.format=jpeg") == {"decode"}
    assert changed("runtime.batch_size=2") == set()
    assert changed("review.min_if_ed=0.5", "review.min_drag_gap=null") == set()  # judges, does not change
    assert changed(fingerprint="model@2") == set(STAGES)


def test_a_config_section_no_stage_names_counts_for_the_method_and_after(scene, monkeypatch):
    """A new peer's section reaches the keys without an edit to the graph."""
    from pydantic import Field

    from dragnext.config import EditConfig, PbsiConfig

    class WithPeer(EditConfig):
        newpeer: PbsiConfig = Field(default_factory=PbsiConfig)

    item = batch_items(scene)[0]
    base = WithPeer.model_validate(build_config(overrides=FAST).to_record())
    other = WithPeer.model_validate({**base.to_record(), "newpeer": {"lr": 0.5}})
    a, b = stage_keys(item, base, "m"), stage_keys(item, other, "m")
    assert {s for s in STAGES if a[s] != b[s]} == {"pbsi", "denoise", "decode"}


def fake_cuda(monkeypatch, free_gb: float, reserved_gb: float = 0.0, allocated_gb: float = 0.0) -> None:
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (free_gb * 2**30, 80 * 2**30))
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda device=None: reserved_gb * 2**30)
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda device=None: allocated_gb * 2**30)


def test_the_default_batch_fits_the_free_cuda_memory_at_the_measured_item_peak(monkeypatch):
    from dragnext.batching import CPU_BATCH_SIZE, default_batch_size

    fake_cuda(monkeypatch, free_gb=80)
    cuda, config = torch.device("cuda"), build_config()
    side = (512, 512)
    assert default_batch_size(cuda, config, side) == 16  # the estimate: 4 GB per 512² item, at most 16
    assert default_batch_size(cuda, config, (1024, 1024)) == 4  # 16 GB per 1024² item (SDXL): 0.8 · 80 / 16
    assert default_batch_size(cuda, config, side, item_mb_at_512=8192) == 8  # 0.8 · 80 GB / 8 GB
    assert default_batch_size(cuda, build_config(overrides=["runtime.batch_size=3"]), side,
                              item_mb_at_512=8192) == 3
    assert default_batch_size(torch.device("cpu"), config, side) == CPU_BATCH_SIZE


def test_a_peak_learnt_on_small_items_is_scaled_to_large_ones(monkeypatch):
    from dragnext.batching import default_batch_size
    from tasks.worker import WorkerState

    fake_cuda(monkeypatch, free_gb=80)
    worker = WorkerState()
    # 16 items of 64² peaked at 16 x 64 MB above the models: 4 096 MB per 512² item
    worker.measured({"kind": "cuda_max_allocated", "mb": 2500.0 + 16 * 64.0, "before_mb": 2500.0},
                    {"size": 16, "stage_sizes": {"lora": 16, "pbsi": 16}}, (64, 64))
    assert worker.item_mb_at_512 == 4096.0
    # a 1024² item needs 16 GB: 4 fit in 0.8 · 80 GB (not the 16 an unscaled 64 MB says), 3 in 0.8 · 60
    assert default_batch_size(torch.device("cuda"), build_config(), (1024, 1024), worker.item_mb_at_512) == 4
    fake_cuda(monkeypatch, free_gb=60)
    assert default_batch_size(torch.device("cuda"), build_config(), (1024, 1024), worker.item_mb_at_512) == 3
    worker.measured({"kind": "process_peak_rss", "mb": 99999.0}, {"size": 1}, (512, 512))  # the CPU: nothing
    assert worker.item_mb_at_512 == 4096.0


def test_a_split_batch_s_peak_is_divided_by_the_items_that_ran_together():
    from tasks.worker import WorkerState

    worker = WorkerState()
    # handed 8, split to 2 by an out-of-memory: the 12 GB peak is 2 items', not 8 items'
    worker.measured({"kind": "cuda_max_allocated", "mb": 2000.0 + 12288.0, "before_mb": 2000.0},
                    {"size": 8, "stage_sizes": {"lora": 2, "inversion": 2, "pbsi": 2}}, (512, 512))
    assert worker.item_mb_at_512 == 6144.0


def test_memory_the_allocator_holds_cached_counts_as_free(monkeypatch):
    from dragnext.batching import default_batch_size

    # 8 GB free on the device, but the allocator caches 40 GB of which 8 GB are in use
    fake_cuda(monkeypatch, free_gb=8, reserved_gb=40, allocated_gb=8)
    assert default_batch_size(torch.device("cuda"), build_config(), (512, 512), 4096.0) == 8  # 0.8 · 40 / 4
