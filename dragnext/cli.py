"""The `dragnext` command: `edit` one image, or write a `tiny-model` of a family for tests,
smoke checks and profiles."""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
from pathlib import Path

import diffusers
import transformers
from tqdm import tqdm

from dragnext.config import ConfigError, build_config, read_config_file
from dragnext.edit import STAGES, edit_batch
from dragnext.fingerprint import digest
from dragnext.instruction import EditItem, InvalidItemError, read_instruction, read_photo, validate_item
from dragnext.model import DEFAULT_MODEL, ModelNotFoundError, ModelSource, load_model, model_preset
from dragnext.model_files import ModelFileError
from dragnext.output_check import EditFailed
from dragnext.photo_file import FORMAT_OF_SUFFIX, Provenance, available, edited_file
from dragnext.style_lora import StyleLoraError
from dragnext.tiny_model import ARCHS, save_tiny_model

log = logging.getLogger("dragnext")


class OutputPathError(ValueError):
    """An output path that cannot be used: it would destroy an input, no image format
    matches it, or it names a file where a folder is needed."""


EXPECTED_ERRORS = (InvalidItemError, ConfigError, ModelNotFoundError, OutputPathError, EditFailed,
                   ModelFileError, StyleLoraError)


class StageProgress:
    """Two bars: stages done, and the iterations of the current stage."""

    def __init__(self, enabled: bool):
        self.stages = tqdm(total=len(STAGES), desc="stages", position=0, disable=not enabled)
        self.steps: tqdm | None = None
        self.enabled = enabled
        self.current = ""

    def __call__(self, stage: str, done: int, total: int) -> None:
        if stage != self.current:
            self._finish_stage()
            self.current = stage
            self.stages.set_postfix_str(stage)
            self.steps = tqdm(total=total, desc=stage, position=1, leave=False,
                              disable=not self.enabled)
        self.steps.n = done
        self.steps.refresh()

    def _finish_stage(self) -> None:
        if self.steps is not None:
            self.steps.close()
            self.stages.update(1)

    def close(self) -> None:
        self._finish_stage()
        self.stages.n = len(STAGES)
        self.stages.close()


def out_format(out: Path) -> str:
    """The `output.format` that `--out`'s extension names."""
    fmt = FORMAT_OF_SUFFIX.get(out.suffix.lower())
    if fmt is None or not available(fmt):
        raise OutputPathError(f"--out {out}: '{out.suffix or '(no extension)'}' is not an image format "
                              "this can write (use .png, .jpg, .webp or .avif)")
    return fmt


def check_out_path(out: Path, inputs: list[Path]) -> None:
    """`--out` must name an output format (`dragnext.photo_file`), and neither it nor its
    record (`.json` beside it) may be one of the inputs."""
    out_format(out)
    if out.is_dir():
        raise OutputPathError(f"--out {out} is a folder; give a file name")
    existing = {p.resolve(): p for p in inputs if p.exists()}
    for written in (out, out.with_suffix(".json")):
        if written.resolve() in existing:
            raise OutputPathError(f"--out {out} would overwrite the input {existing[written.resolve()]} "
                                  f"(with the {'edited image' if written == out else 'record'}); "
                                  "choose another path")


def cmd_edit(args: argparse.Namespace) -> int:
    out = Path(args.out)
    check_out_path(out, [Path(args.image), Path(args.instruction)])
    base = read_config_file(args.config) if args.config else None
    overrides = [*(args.set or []), f"output.format={out_format(out)}"]  # the extension names the format
    config = build_config(base, overrides, preset=model_preset(args.model))
    item_id = args.item_id or out.stem
    photo = read_photo(args.image, item_id)
    image = photo.image
    instruction = read_instruction(args.instruction, item_id, image.size)
    item = validate_item(EditItem(image, instruction, item_id, photo=photo))  # before any model is loaded
    model = load_model(model_source(args), device=args.device)
    config.check_model(model.architecture)
    progress = StageProgress(enabled=not args.quiet)
    try:
        [result] = edit_batch([item], model, config, callback=progress)
    finally:
        progress.close()
    if isinstance(result, BaseException):
        raise result
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(edited_file(result, Provenance(item_id, digest(config.output_record()))))
    record_path = out.with_suffix(".json")
    record = {"inputs": {"image": str(args.image), "instruction": str(args.instruction)},
              "output": str(out), **result.to_record()}
    record_path.write_text(json.dumps(record, indent=2))
    total = sum(result.timings.values())
    log.info("wrote %s and %s (%.1f s on %s)", out, record_path, total, result.device)
    return 0


def cmd_tiny_model(args: argparse.Namespace) -> int:
    path = save_tiny_model(args.directory, seed=args.seed, arch=args.arch, full_size=args.full_size)
    log.info("wrote a random-weight %s%s model to %s", "full-size " if args.full_size else "tiny ",
             args.arch, path)
    return 0


def add_model_arguments(command, default: str | None = DEFAULT_MODEL) -> None:
    """--model, and the parts that change its weights: --vae, --lora, --lora-scale."""
    command.add_argument("--model", default=default, help="hub id or local diffusers folder of an SD1.x, "
                         "SD2.x or SDXL model" + (f" (default: {default})" if default else ""))
    command.add_argument("--vae", help="an AutoencoderKL folder that replaces the model's VAE")
    command.add_argument("--lora", help="a style LoRA (.safetensors in diffusers or kohya format, or a "
                         "folder holding one), fused into the model; each item's LoRA trains on top")
    command.add_argument("--lora-scale", type=finite_float, default=1.0,
                         help="the style LoRA's weight (default 1)")


def finite_float(text: str) -> float:
    """A number argument that is finite: argparse says so in one line."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
    return value


def model_source(args: argparse.Namespace) -> ModelSource:
    return ModelSource(model=str(args.model), vae=args.vae, lora=args.lora, lora_scale=args.lora_scale)


def add_commands(commands) -> None:
    """The library's commands, for any `dragnext` parser."""
    edit = commands.add_parser("edit", help="edit one image with a drag instruction file")
    add_model_arguments(edit)
    edit.add_argument("--image", required=True, help="input image")
    edit.add_argument("--instruction", required=True, help="instruction JSON (SPEC §2)")
    edit.add_argument("--out", required=True, help="edited image path; the record goes beside "
                      "it as .json")
    add_config_arguments(edit)
    edit.add_argument("--device", help="cuda, cuda:1, cpu (default: CUDA when present)")
    edit.add_argument("--item-id", help="name used in errors and the record (default: out's stem)")
    edit.set_defaults(run=cmd_edit)

    tiny = commands.add_parser("tiny-model", help="write a random-weight model of a family: tiny (tests, "
                               "smoke checks) or full-size (speed)")
    tiny.add_argument("directory", help="where the model's diffusers folder is written")
    tiny.add_argument("--arch", choices=ARCHS, default="sd15", help="the family's layout (default sd15)")
    tiny.add_argument("--full-size", action="store_true", help="the family's exact configs (SD1.5 4.3 GB, "
                      "SD2.1 5.2 GB, SDXL 13.9 GB in fp32): for profile and gpu-check")
    tiny.add_argument("--seed", type=int, default=0, help="seeds the random weights")
    tiny.set_defaults(run=cmd_tiny_model)


def add_set_argument(command, help: str = "override a config key, e.g. --set lora.steps=2 "
                     "(repeatable)") -> None:
    command.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help=help)


def add_config_arguments(command) -> None:
    add_set_argument(command)
    command.add_argument("--config", help="JSON file of config keys, applied before --set")


def parser(*command_groups) -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="dragnext", description="Region-based drag editing "
                                   "with diffusion models (DragNeXt).")
    root.add_argument("-q", "--quiet", action="store_true", help="no progress bars, warnings only")
    root.add_argument("-v", "--verbose", action="store_true",
                      help="also Prefect's line per flow and task run")
    commands = root.add_subparsers(dest="command", required=True)
    for add in command_groups or (add_commands,):
        add(commands)
    return root


def main(argv: list[str] | None = None, root: argparse.ArgumentParser | None = None,
         expected_errors: tuple[type[Exception], ...] = EXPECTED_ERRORS,
         exit_3: tuple[type[Exception], ...] = ()) -> int:
    """Run a command; an expected error is one line and exit 2 (bad input), or exit 3 for
    `exit_3` (the output or store cannot be used)."""
    args = (root or parser()).parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")
    # transformers draws a bar per file it loads or saves: noise above the stage bars
    transformers.utils.logging.disable_progress_bar()
    if args.quiet:
        diffusers.utils.logging.disable_progress_bar()
    try:
        return args.run(args)
    except exit_3 as error:
        print(f"dragnext: error: {error}", file=sys.stderr)
        return 3
    except expected_errors as error:
        print(f"dragnext: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
