"""DragNeXt: region-based drag editing with diffusion models (one image at a time)."""

import os

# Before torch is imported: OpenMP's spin-waiting made a UNet forward 15x slower on a busy
# 2-core machine. A value the user set wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from dragnext.config import ConfigError, EditConfig, build_config
from dragnext.edit import EditResult, edit
from dragnext.instruction import (
    Drag,
    EditItem,
    Instruction,
    InvalidItemError,
    read_instruction,
    validate_item,
)
from dragnext.model import DragModel, ModelNotFoundError, load_model

__all__ = [
    "ConfigError", "Drag", "DragModel", "EditConfig", "EditItem", "EditResult", "Instruction",
    "InvalidItemError", "ModelNotFoundError", "build_config", "edit", "load_model",
    "read_instruction", "validate_item",
]
