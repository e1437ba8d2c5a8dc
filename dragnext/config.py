"""The edit configuration: one typed object with the keys and defaults of SPEC §3.

Every result records the full config, so a run can be reproduced from its record alone.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from dragnext.architecture import Architecture

# Sections that do not change an edit's output: how it runs, how it is judged.
NOT_OUTPUT = ("runtime", "review")
Compile = Literal["off", "inductor", "cuda_graphs"]  # `runtime.compile`: `dragnext.engine`


def output_keys(record: dict[str, Any]) -> dict[str, Any]:
    """A config record without the `NOT_OUTPUT` sections: what digests cover."""
    return {k: v for k, v in record.items() if k not in NOT_OUTPUT}


class ConfigError(ValueError):
    """A configuration key or value that cannot be used."""


class _Section(BaseModel):
    # NaN and infinity pass every `ge`/`le` bound in a surprising way (inf >= 0): refused.
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


class LoraConfig(_Section):
    """The per-image LoRA (SPEC §3, step 2): adapters in the UNet's attention projections, trained
    on the image itself before it is inverted."""
    enabled: bool = Field(True, description="finetune a LoRA on each image (off: the base model edits)")
    rank: int = Field(16, ge=1, le=256, description="r of each adapter's B·A")
    steps: int = Field(80, ge=0, le=10_000, description="training steps per image")
    lr: float = Field(5e-4, gt=0, le=1, description="AdamW learning rate")
    batch_size: int = Field(4, ge=1, le=64, description="views per training step")
    views: int = Field(8, ge=1, le=64, description="augmented views of each image, VAE-encoded once; "
                       "each step draws batch_size of them")


class InversionConfig(_Section):
    """DDIM inversion (SPEC §3, step 3): the image's latent noised back to step T."""
    num_steps: int = Field(50, ge=1, le=1000, description="DDIM steps of the full schedule")
    strength: float = Field(0.75, gt=0, le=1, description="T = round(num_steps × strength): how far "
                            "the image is inverted")

    @property
    def start_step(self) -> int:
        """T: the step (counted from the clean end) that the image is inverted to."""
        return round(self.num_steps * self.strength)


class PbsiConfig(_Section):
    """Latent Region Optimisation solved by PBSI (SPEC §3, step 5)."""
    steps: int = Field(6, ge=1, le=1000, description="T - T' + 1: denoising steps that run PBSI")
    iterations: int = Field(10, ge=1, le=1000, description="K: Adam iterations per step")
    lr: float = Field(0.02, gt=0, le=10, description="Adam learning rate on z_t")
    lam: float = Field(0.1, ge=0, le=1e4, description="weight of the background term")
    progressive: bool = Field(True, description="η grows from 0 to 1 over the iterations (the paper); "
                              "off: η = 1 from the first")
    eta_steps: int | None = Field(
        None, ge=1, description="PBSI steps over which η grows to 1 and is then held (all of them when "
        "pbsi.steps is fewer); None = all of them (the paper: η reaches 1 at the last iteration of the "
        "last step)")
    loss: Literal["features", "x0", "both"] = Field(
        "features", description="what the region term compares: the UNet features F (the paper), "
        "the predicted clean latent x̂₀ upsampled to F's size, or both")
    x0_weight: float = Field(1.0, ge=0, le=1e4, description="weight of the x̂₀ region term (loss x0 or both)")
    init: Literal["inverted", "warp"] = Field(
        "inverted", description="z_T that PBSI starts from: the inverted latent (the paper) or it "
        "warped by the drags' final maps, the vacated handle region refilled with noise")
    vacate: Literal["keep", "fill"] = Field(
        "keep", description="the handle region a drag leaves: left to the denoiser (the paper) or "
        "pulled, in x̂₀, towards the reference background filled in from around the handle regions")
    vacate_weight: float = Field(1.0, ge=0, le=1e4,
                                 description="weight of the vacated-region term (vacate fill)")
    x0_reference: Literal["predicted", "clean"] = Field(
        "predicted", description="what the x̂₀ terms (loss x0 or both, vacate fill, keep) compare with: "
        "the reference's x̂₀ at the same step, or the input's clean latent z_0")
    keep_weight: float = Field(0.0, ge=0, le=1e4, description="weight of the keep term: inside M, "
                               "away from the handle and target regions, x̂₀ held to the reference "
                               "(0 = off, the paper)")
    keep_path: bool = Field(False, description="the keep term also holds the path the drags sweep, but "
                            "where the object is now, ends and starts: no trail behind a long drag")


class DragDiffusionConfig(_Section):
    """The `dragdiffusion` peer (SPEC §8)."""
    iterations: int = Field(80, ge=1, le=10_000, description="motion supervision and point tracking "
                            "iterations")
    lr: float = Field(0.01, gt=0, le=10, description="Adam learning rate on z_t")
    lam: float = Field(0.1, ge=0, le=1e4, description="weight of the term outside the editable mask")
    r_m: int = Field(1, ge=0, le=64, description="motion supervision patch radius, feature px")
    r_p: int = Field(3, ge=1, le=64, description="point tracking search radius, feature px")
    reached_px: float = Field(2.0, gt=0, le=1e3,
                              description="a handle this close to its target, in feature px, "
                              "is reached and no longer supervised (the original's 2)")


class FeaturesConfig(_Section):
    """Which UNet decoder outputs form the feature map F the region term compares."""
    blocks: list[Annotated[int, Field(ge=0, le=16)]] | Literal["all"] | None = Field(
        None, min_length=1, description="`unet.up_blocks` whose outputs form F; None = the "
        "architecture's (up_blocks[-2], the last that upsamples: 2 on SD1.x/2.x, 1 on SDXL); "
        "\"all\" = every decoder stage (the paper's F)")


class AttentionConfig(_Section):
    """Mutual self-attention in the final denoising (SPEC §3, step 6)."""
    mutual: bool = Field(True, description="the edited branch attends to the reference branch's keys "
                         "and values")
    start_layer: int | None = Field(
        None, ge=0, le=1024, description="first self-attention layer (forward order) that attends to the "
        "reference; None = the paper's, as a rule: the first of up_blocks[-2] (10 of 16 on SD1.5, "
        "64 of 70 on SDXL)")


class OutputConfig(_Section):
    """What of the input is pasted back over the decoded edit, and how the edited file is
    written (`dragnext.photo`, `dragnext.photo_file`)."""
    paste_background: bool = Field(
        True, description="keep the input outside M: there the output is the input's own pixels, bit for "
        "bit, at its own resolution, depth and colour profile (the blend's feather lies inside M)")
    paste_unswept: bool = Field(
        False, description="blend the input back wherever the drags do not pass (outside the region "
        "their target regions sweep, widened by 3% of the working size, at least 2 px): inside M too, so "
        "what the drag does not touch comes out as it went in, not as the model re-renders it")
    paste_path: bool = Field(
        False, description="blend the input back on the path between where the drags' objects start and "
        "end too: the edit is kept only on their handle and final target regions, widened as for "
        "paste_unswept. The path is background once the object has passed, so what the denoiser left "
        "along it (a trail, a smear of an object turned part-way) is replaced by the input")
    paste_moved: bool = Field(
        False, description="paste the handle regions' own pixels, moved by the drags' geometry (through "
        "Π(1)), over their final target regions (widened by 2 px, feathered): a moved object keeps its exact "
        "shape, colour and texture, and the edit makes what it vacates and its surroundings. Exact for "
        "translate, rotate and scale; for a deform, the stretch field's warp of the handle's pixels")
    format: Literal["png", "jpeg", "webp", "avif"] = Field(
        "png", description="the edited file's format (png keeps 16 bits and alpha; jpeg has neither: "
        "a transparent input is laid over white)")
    quality: int = Field(95, ge=1, le=100, description="jpeg, webp and avif quality")
    strip_metadata: bool = Field(
        False, description="write no EXIF and no ICC profile (the provenance record stays): by default the "
        "input's EXIF (orientation reset to 1, thumbnail dropped) and ICC profile are carried over")


class CropConfig(_Section):
    """Edit where the edit is (`dragnext.crop`): an input larger than the working size is edited
    on a box around what its drags touch and pasted back at its own resolution."""
    enabled: bool = Field(
        True, description="edit an input larger than the working size on the box around the region its "
        "drags pass through (at least the working size each way), not on the whole picture shrunk to the "
        "working size; outside the box the output is the input's own pixels")
    margin: float = Field(
        0.25, ge=0, le=4, description="context kept around the drags' region on each side, as a share of "
        "that region's longer side")


class ReviewConfig(_Section):
    """When a succeeded item is flagged `needs_review`: its own metrics (`dragnext.review`)
    say the drag probably did not happen, hurt the picture, gave the object the wrong shape or
    left a ghost. The defaults are tuned together on the benchmark's tuning seeds with the
    fixture's preset less `output.paste_moved` (docs/review-thresholds.json; `min_if_ed` from
    the derivation before the preset pasted the input back outside the drags, which makes
    IF_ed 1 there and leaves that flag nothing to be tuned on); a model's preset may carry its
    own (the fixture's does). None turns a flag off. Left out of every digest: a flag judges
    an output, it does not change it."""
    min_drag_gap: float | None = Field(
        -0.1685, ge=-1, le=1, description="flag when IF_th - IF_hh is below this: the content looks more "
        "like it stayed at the handle than arrived at the target")
    min_if_ed: float | None = Field(
        0.9229, ge=0, le=1, description="flag when IF_ed (fidelity outside the editable mask) is below "
        "this: the picture changed where it should not have")
    max_target_err: float | None = Field(
        8.303, ge=0, le=255, description="flag when target_err (mean |RGB error| between the edit and the "
        "input moved by the drags' geometry, on their final target regions) is above this: the object "
        "arrived in the wrong shape or colour")
    max_vacated_residual: float | None = Field(
        0.0775, ge=0, le=1, description="flag when vacated_residual (the share of what the drags vacate "
        "that still looks as it did) is above this: a ghost of the object stayed behind")


class RuntimeConfig(_Section):
    """How items are run, not what they become: left out of every digest and stage key."""
    batch_size: int | None = Field(
        None, ge=1, le=256, description="items edited together, sharing every UNet call; None = "
        "chosen for the device (`dragnext.batching.default_batch_size`)")
    compile: Compile = Field(
        "off", description="how UNet passes run (`dragnext.engine`): off (eager), inductor (torch.compile; "
        "CUDA or CPU) or cuda_graphs (compiled and replayed from captured CUDA graphs; CUDA only). Each "
        "shape compiles on its first batch, which takes minutes")


class EditConfig(_Section):
    # Bounded: memory grows with its square (2048 px already takes ~16x the 512 px memory).
    size: int | None = Field(None, ge=8, le=2048, description="working size of the longer image side, px; "
                             "None = the model's native size (512 SD1.x, 768 SD2.x-v, 1024 SDXL)")
    seed: int = Field(0, ge=0, le=2**32 - 1, description="seeds the LoRA's draws and every noise of the edit")
    method: Literal["dragnext", "dragdiffusion", "warp"] = Field(
        "dragnext", description="dragnext (the paper), dragdiffusion (the peer, SPEC §8) or warp (the "
        "drags' maps applied to the latent, no optimisation)")
    lora: LoraConfig = Field(default_factory=LoraConfig)
    inversion: InversionConfig = Field(default_factory=InversionConfig)
    pbsi: PbsiConfig = Field(default_factory=PbsiConfig)
    dragdiffusion: DragDiffusionConfig = Field(default_factory=DragDiffusionConfig)
    features: FeaturesConfig = Field(default_factory=FeaturesConfig)
    attention: AttentionConfig = Field(default_factory=AttentionConfig)
    output: OutputConfig = Field(default_factory=OutputConfig)
    crop: CropConfig = Field(default_factory=CropConfig)
    review: ReviewConfig = Field(default_factory=ReviewConfig)
    runtime: RuntimeConfig = Field(default_factory=RuntimeConfig)

    @field_validator("pbsi")
    @classmethod
    def _pbsi_fits_inversion(cls, pbsi: PbsiConfig, info) -> PbsiConfig:
        inversion = info.data.get("inversion")
        if inversion is not None and pbsi.steps > inversion.start_step:
            raise ValueError(
                f"pbsi.steps={pbsi.steps} exceeds the inverted steps "
                f"T=round(inversion.num_steps*inversion.strength)={inversion.start_step}")
        return pbsi

    @property
    def edit_step(self) -> int:
        """The step whose latent the method edits; denoising continues below it."""
        T = self.inversion.start_step
        return T - self.pbsi.steps if self.method == "dragnext" else T

    def to_record(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    def output_record(self) -> dict[str, Any]:
        """The keys that decide the output (all but `NOT_OUTPUT`): what digests cover."""
        return output_keys(self.to_record())

    def check_model(self, architecture: Architecture) -> None:
        """The keys that depend on the model must fit it: `features.blocks` must name its
        decoder stages, `attention.start_layer` one of its self-attention layers."""
        blocks, up_blocks = self.features.blocks, architecture.up_blocks
        if isinstance(blocks, list) and any(b >= up_blocks for b in blocks):
            raise ConfigError(f"invalid config: features.blocks: {blocks} names a decoder stage this "
                              f"model lacks (its up_blocks are 0-{up_blocks - 1})")
        start, layers = self.attention.start_layer, architecture.self_attention_layers
        if start is not None and start >= layers:
            raise ConfigError(f"invalid config: attention.start_layer: {start}, but this model has "
                              f"{layers} self-attention layers (0-{layers - 1})")

    def working_side(self, architecture: Architecture) -> int:
        """The longer side edits run at: `size`, or the model's native size."""
        return self.size or architecture.native_size

    def feature_blocks(self, architecture: Architecture) -> list[int]:
        """The decoder stages whose outputs form F on this model."""
        if self.features.blocks == "all":
            return list(range(architecture.up_blocks))
        return self.features.blocks or [architecture.feature_block]


def _parse_value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _set_dotted(tree: dict[str, Any], key: str, value: Any) -> None:
    *parents, leaf = key.split(".")
    node = tree
    for part in parents:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"config key '{key}': '{part}' is not a section")
        node = child
    node[leaf] = value


def _merge(into: dict[str, Any], tree: dict[str, Any]) -> dict[str, Any]:
    for key, value in tree.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            _merge(into[key], value)
        else:
            into[key] = value
    return into


def _format_validation_error(error: ValidationError) -> str:
    """One problem per key: a value that fits no branch of a union (`[2]` or `"all"`) is
    reported by its first branch, without pydantic's branch tags in the key."""
    problems: dict[str, str] = {}
    for item in error.errors():
        parts = [str(p) for p in item["loc"] if not (isinstance(p, str) and "[" in p)]
        key = ".".join(parts) or "<config>"
        if not any(key.startswith(k) or k.startswith(key) for k in problems):
            problems[key] = item["msg"]
    return "invalid config: " + "; ".join(f"{k}: {m}" for k, m in problems.items())


def parse_overrides(texts: list[str]) -> dict[str, Any]:
    """`["lora.steps=2", …]` as `{"lora.steps": 2, …}`, values read as JSON where they parse."""
    return dict(_split_override(text) for text in texts)


def build_config(
    base: dict[str, Any] | None = None, overrides: list[str] | dict[str, Any] | None = None,
    preset: dict[str, Any] | None = None,
) -> EditConfig:
    """Defaults, then a model's `preset`, then `base` (e.g. a config file), then `key=value`
    overrides, validated. Preset and overrides take dotted keys."""
    tree: dict[str, Any] = {}
    for key, value in (preset or {}).items():
        _set_dotted(tree, key, value)
    tree = _merge(tree, json.loads(json.dumps(base or {})))
    if not isinstance(overrides, dict):
        overrides = parse_overrides(overrides or [])
    for key, value in overrides.items():
        _set_dotted(tree, key, value)
    try:
        return EditConfig.model_validate(tree)
    except ValidationError as error:
        raise ConfigError(_format_validation_error(error)) from None


def _split_override(text: str) -> tuple[str, Any]:
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override '{text}' is not of the form key=value")
    return key.strip(), _parse_value(value.strip())


def read_config_file(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"config file '{path}' does not exist") from None
    except json.JSONDecodeError as error:
        raise ConfigError(f"config file '{path}' is not valid JSON: {error}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file '{path}' must hold a JSON object")
    return data
