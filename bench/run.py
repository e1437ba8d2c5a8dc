"""Run methods on benchmark cases with one model and score them against the ground truth.

A method is a name with optional config overrides: `dragnext`, `warp`, `dragdiffusion`,
or e.g. `dragnext:pbsi.progressive=false` (the paper's ablation); `oracle` (bench.oracle)
is the ceiling.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass

import numpy as np
from PIL import Image
from tqdm import tqdm

from bench import oracle
from bench.cases import TYPES, Case
from dragnext.config import EditConfig, build_config, parse_overrides
from dragnext.edit import edit
from dragnext.instruction import Drag, EditItem, Instruction, validate_item
from dragnext.metrics import image_fidelity, region_psnr, region_ssim, score_edit, warp_agreement
from dragnext.model import DragModel
from dragnext.preview import enlarge, overlay

METRICS = ("success", "success_object", "success_strict", "iou", "colour_err", "ghost", "centroid_err",
           "neighbour_iou", "psnr_keep", "psnr_vacated",
           "psnr_gt", "ssim_gt", "if_ed", "if_th", "if_hh", "target_err", "vacated_residual", "seconds")


@dataclass(frozen=True)
class Method:
    label: str
    overrides: dict

    @classmethod
    def parse(cls, text: str) -> Method:
        name, _, rest = text.partition(":")
        overrides = parse_overrides([part for part in rest.split(",") if part]) if rest else {}
        return cls(text, overrides if name == oracle.NAME else {"method": name, **overrides})

    @property
    def is_oracle(self) -> bool:
        return self.label.partition(":")[0] == oracle.NAME


def item_of(case: Case) -> EditItem:
    drag = Drag(case.type, case.handle_mask(), case.handle, case.target, case.center)
    instruction = Instruction(drags=(drag,), prompt=case.scene.prompt(), editable_mask=case.editable_mask())
    return validate_item(EditItem(Image.fromarray(case.scene.render()), instruction, case.case_id))


def score(case: Case, item: EditItem, edited: Image.Image, seconds: float) -> dict:
    image, expected = np.asarray(edited), case.expected.render()
    fidelity = image_fidelity(item.image, edited, item)
    region = item.editable
    return {**score_edit(case.scene.render(), image, expected, case.colour, case.neighbour_colours, region),
            "psnr_gt": region_psnr(image, expected, region),
            "ssim_gt": region_ssim(image, expected, region),
            "if_ed": fidelity["if_ed_ssim"], "if_th": fidelity["if_th_ssim"],
            "if_hh": fidelity["if_hh_ssim"], **warp_agreement(item.image, edited, item), "seconds": seconds}


def _mean(values: list[float]) -> float | None:
    finite = [v for v in values if v is not None and math.isfinite(v)]
    return float(np.mean(finite)) if finite else None


def summarise(scores: list[dict]) -> dict:
    """Means per metric (centroid error and PSNR over finite values), with n."""
    return {**{m: _mean([s[m] for s in scores]) for m in METRICS}, "n": len(scores)}


def _lora_key(case: Case, config: EditConfig) -> tuple | None:
    """Methods that finetune the same item the same way share one LoRA (it does not depend
    on the method); each is still charged the finetune's time."""
    if not config.lora.enabled:
        return None
    # the crop decides the picture the LoRA is trained on
    return (case.case_id, config.size, config.seed, json.dumps(config.lora.model_dump(), sort_keys=True),
            json.dumps(config.crop.model_dump(), sort_keys=True))


def types_of(cases: list[Case]) -> list[str]:
    """The drag types present, in `TYPES` order."""
    return [t for t in TYPES if any(c.type == t for c in cases)]


Scored = dict[str, tuple[list[dict], list[Image.Image]]]  # label → (scores, edited), in case order


def score_cases(model: DragModel, cases: list[Case], methods: list[Method], base: dict,
                quiet: bool = False) -> Scored:
    """Every method on every case: each case's scores and edited image."""
    items = [item_of(c) for c in cases]
    scored: Scored = {}
    finetuned: dict[tuple, tuple[dict, float]] = {}
    for method in methods:
        config: EditConfig = build_config(base, method.overrides)
        scores, edited = [], []
        for case, item in tqdm(list(zip(cases, items, strict=True)), desc=method.label, disable=quiet):
            start = time.perf_counter()
            if method.is_oracle:
                image = oracle.oracle_image(model, item, Image.fromarray(case.expected.render()), config)
                seconds = time.perf_counter() - start
            else:
                key = _lora_key(case, config)
                weights, lora_seconds = finetuned.get(key, (None, 0.0))
                result = edit(item.image, item.instruction, model, config, item_id=case.case_id,
                              lora_weights=weights)
                seconds = time.perf_counter() - start + lora_seconds
                if key and weights is None:
                    finetuned[key] = (result.lora_weights, result.timings["lora"])
                image = result.image
            edited.append(image)
            scores.append({"case_id": case.case_id, "type": case.type, **score(case, item, image, seconds)})
        scored[method.label] = (scores, edited)
    return scored


def results_of(scored: Scored, cases: list[Case], methods: list[Method], base: dict) -> dict:
    """The results JSON: {"methods": {label: {"overall", "by_type", "config", "cases"}},
    "paired_keep": [...]}, where `cases` holds each case's own scores (what the review flags
    are tuned on) and `paired_keep` is `paired_keep`'s."""
    results = {}
    for method in methods:
        scores, _ = scored[method.label]
        results[method.label] = {
            "overall": summarise(scores),
            "by_type": {t: summarise([s for s in scores if s["type"] == t]) for t in types_of(cases)},
            "config": build_config(base, method.overrides).to_record(),
            "cases": scores,
        }
    return {"methods": results, "paired_keep": paired_keep(results)}


def paired_keep(methods: dict) -> list[dict]:
    """`psnr_keep` of the first method and of each other plain method over the cases both
    edited successfully. An edit that leaves the object where it was leaves the rest of the
    picture as it was too, so a mean over every case rewards a method for failing."""
    first, *peers = [label for label in methods if ":" not in label and label != oracle.NAME] or [None]
    pairs = []
    for peer in peers:
        theirs = {case["case_id"]: case for case in methods[peer]["cases"]}
        cases = [(a, theirs[a["case_id"]]) for a in methods[first]["cases"]
                 if a["success"] and theirs[a["case_id"]]["success"]]
        pairs.append({"methods": [first, peer], "n": len(cases),
                      first: _mean([a["psnr_keep"] for a, _ in cases]),
                      peer: _mean([b["psnr_keep"] for _, b in cases])})
    return pairs


def run(model: DragModel, cases: list[Case], methods: list[Method], base: dict,
        quiet: bool = False) -> tuple[dict, dict[str, list[Image.Image]]]:
    """The results JSON and each method's edited images, in one process."""
    scored = score_cases(model, cases, methods, base, quiet)
    return results_of(scored, cases, methods, base), {label: edited for label, (_, edited) in scored.items()}


def table(results: dict) -> str:
    header = f"{'method':34s} {'type':9s} {'n':>3s} {'success':>7s} {'object':>7s} {'strict':>7s} " \
             f"{'iou':>5s} {'col_err':>7s} {'ghost':>5s} {'nb_iou':>6s} " \
             f"{'cent_px':>7s} {'p_keep':>6s} {'p_vac':>6s} {'psnr_gt':>7s} " \
             f"{'IF_ed':>6s} {'IF_th':>6s} {'IF_hh':>6s} {'s/item':>7s}"
    lines = [header, "-" * len(header)]

    def fmt(v, spec):
        return format(v, spec) if v is not None else "—".rjust(int(spec.split(".")[0]))

    for label, result in results["methods"].items():
        for kind, row in [("overall", result["overall"]), *result["by_type"].items()]:
            rates = " ".join(f"{fmt(None if row[m] is None else 100 * row[m], '6.0f')}%"
                             for m in ("success", "success_object", "success_strict"))
            fidelity = " ".join(fmt(row[m], "6.3f") for m in ("if_ed", "if_th", "if_hh"))
            lines.append(f"{label:34s} {kind:9s} {row['n']:3d} {rates} {fmt(row['iou'], '5.2f')} "
                         f"{fmt(row['colour_err'], '7.1f')} {fmt(row['ghost'], '5.2f')} "
                         f"{fmt(row['neighbour_iou'], '6.3f')} {fmt(row['centroid_err'], '7.2f')} "
                         f"{fmt(row['psnr_keep'], '6.2f')} {fmt(row['psnr_vacated'], '6.2f')} "
                         f"{fmt(row['psnr_gt'], '7.2f')} {fidelity} {fmt(row['seconds'], '7.1f')}")
    for pair in results.get("paired_keep", []):
        first, peer = pair["methods"]
        lines.append(f"psnr_keep where {first} and {peer} both succeed (n = {pair['n']}): "
                     f"{fmt(pair[first], '5.2f')} vs {fmt(pair[peer], '5.2f')} dB")
    return "\n".join(lines)


def grid(cases: list[Case], images: dict[str, list[Image.Image]], per_type: int = 2) -> Image.Image:
    """input | instruction | expected | each method, for the first cases of each drag type.
    Variants (`method:overrides`, i.e. ablations) are left out when a plain method ran."""
    images = {label: edited for label, edited in images.items() if ":" not in label} or images
    picked = [i for kind in types_of(cases)
              for i in [j for j, c in enumerate(cases) if c.type == kind][:per_type]]
    columns = 3 + len(images)
    size = enlarge(Image.fromarray(cases[0].scene.render())).width
    canvas = Image.new("RGB", (columns * (size + 2), len(picked) * (size + 2)), (255, 255, 255))
    for r, i in enumerate(picked):
        item = item_of(cases[i])
        panels = [item.image, overlay(item), Image.fromarray(cases[i].expected.render())]
        panels += [edited[i] for edited in images.values()]
        for c, panel in enumerate(panels):
            canvas.paste(enlarge(panel), (c * (size + 2), r * (size + 2)))
    return canvas


def write_json(results: dict, path: str) -> None:
    with open(path, "w") as handle:
        json.dump(results, handle, indent=2, default=lambda v: None)
