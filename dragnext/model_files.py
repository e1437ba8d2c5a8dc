"""A model's files read as untrusted input, like a manifest's rows: a special file (a FIFO,
a device) is refused by `stat` before anything opens it, since opening one blocks or never
ends; a JSON config is read within a size bound, parsed with bounded depth, and checked
field by field against what diffusers' loader and `dragnext.architecture` read from it, so a
wrong config is one line naming the file and the field, never a traceback deep in a loader."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

# Config files of a diffusers model are a few kB; anything larger is no config.
MAX_CONFIG_BYTES = 1 << 20

Count = Annotated[int, Field(strict=True, gt=0, le=1 << 16)]
Flag = Annotated[bool, Field(strict=True)]


class ModelFileError(ValueError):
    """A model, VAE or LoRA file that cannot be used; names the file (and the field)."""


def check_regular(path: Path, name: str) -> None:
    """`path` (followed through links) is a regular file, or raises `ModelFileError`."""
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise ModelFileError(f"{name}: {path} does not exist") from None
    if not stat.S_ISREG(mode):
        raise ModelFileError(f"{name}: {path} is not a regular file (a FIFO, a device or a socket "
                             "would block or never end)")


def check_tree(folder: Path, name: str) -> None:
    """Every entry under `folder` is a regular file or a folder, or raises `ModelFileError`:
    the loaders open whichever files they look for, and a FIFO among them hangs the run."""
    seen: set[tuple[int, int]] = set()
    for root, dirs, files in os.walk(folder, followlinks=True):
        where = Path(root).stat()
        if (where.st_dev, where.st_ino) in seen:  # a link back up: walked already
            dirs[:] = []
            continue
        seen.add((where.st_dev, where.st_ino))
        for entry in files:
            path = Path(root) / entry
            if path.exists() or not path.is_symlink():  # a dangling link is what the loader reports
                check_regular(path, name)
        dirs[:] = [d for d in dirs if not d.startswith(".")]  # the hub cache's own bookkeeping


def read_config(path: Path, name: str | None = None) -> dict[str, Any]:
    """The JSON object in `path`, or raises `ModelFileError` (`FileNotFoundError` when there is
    no file: its caller says what it means)."""
    name = name or str(path)
    if not path.exists():
        raise FileNotFoundError(path)
    check_regular(path, name)
    size = path.stat().st_size
    if size > MAX_CONFIG_BYTES:
        raise ModelFileError(f"{name}: {size:,} bytes; a config is at most {MAX_CONFIG_BYTES:,}")
    try:
        value = json.loads(path.read_bytes())
    except RecursionError:
        raise ModelFileError(f"{name}: nested too deeply to be a config") from None
    except ValueError as error:
        raise ModelFileError(f"{name}: not valid JSON ({error})") from None
    if not isinstance(value, dict):
        raise ModelFileError(f"{name}: must be a JSON object, not a {type(value).__name__}")
    return value


def _per_block(value: Any, blocks: int, field: str) -> None:
    if isinstance(value, list) and len(value) != blocks:
        raise ValueError(f"{field}: {len(value)} values for {blocks} down blocks")


class UnetFields(BaseModel):
    """What the loader builds a `UNet2DConditionModel` from and the architecture reads."""
    model_config = ConfigDict(extra="allow", populate_by_name=True)

    class_name: str = Field("UNet2DConditionModel", alias="_class_name")
    down_block_types: list[str] = Field(min_length=1, max_length=8)
    up_block_types: list[str] = Field(min_length=2, max_length=8)
    block_out_channels: list[Count] = Field(min_length=1, max_length=8)
    layers_per_block: Count | list[Count] = 2
    transformer_layers_per_block: Count | list[Count | list[Count]] = 1
    reverse_transformer_layers_per_block: list[Count | list[Count]] | None = None
    mid_block_type: str | None = "UNetMidBlock2DCrossAttn"
    sample_size: Count | tuple[Count, Count]  # diffusers takes (height, width) too
    in_channels: Count = 4
    out_channels: Count = 4
    class_embed_type: str | None = None
    addition_embed_type: str | None = None
    use_linear_projection: Flag = False

    @model_validator(mode="after")
    def _blocks_agree(self) -> UnetFields:
        blocks = len(self.down_block_types)
        if len(self.up_block_types) != blocks or len(self.block_out_channels) != blocks:
            raise ValueError(f"down_block_types, up_block_types and block_out_channels must have one entry "
                             f"per block ({blocks}, {len(self.up_block_types)} and "
                             f"{len(self.block_out_channels)})")
        _per_block(self.layers_per_block, blocks, "layers_per_block")
        _per_block(self.transformer_layers_per_block, blocks, "transformer_layers_per_block")
        reverse = self.reverse_transformer_layers_per_block
        if reverse is not None:
            _per_block(reverse, blocks, "reverse_transformer_layers_per_block")
        return self

    @property
    def native_latent(self) -> int:
        """The longer latent side it was trained at."""
        return max(self.sample_size) if isinstance(self.sample_size, tuple) else self.sample_size


class VaeFields(BaseModel):
    model_config = ConfigDict(extra="allow", populate_by_name=True)

    class_name: str = Field("AutoencoderKL", alias="_class_name")
    block_out_channels: list[Count] = Field(min_length=1, max_length=8)
    latent_channels: Count = 4
    scaling_factor: float = Field(0.18215, gt=0, allow_inf_nan=False)


class SchedulerFields(BaseModel):
    model_config = ConfigDict(extra="allow")

    prediction_type: str = "epsilon"
    num_train_timesteps: Count = 1000


def fields(model: type[BaseModel], config: Any, name: str) -> BaseModel:
    """`config` (a dict, or diffusers' `FrozenDict`) checked as `model`, or `ModelFileError`."""
    try:
        return model.model_validate(dict(config))
    except ValidationError as error:
        first = error.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        message = first["msg"].removeprefix("Value error, ")
        raise ModelFileError(f"{name}: {where + ': ' if where else ''}{message}") from None
