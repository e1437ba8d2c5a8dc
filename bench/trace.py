"""Look inside PBSI on benchmark cases: the predicted clean image x̂₀ after each PBSI step,
decoded, and the loss terms there, so a failure can be seen where it starts.

    python -m bench.trace deform-1004 deform-1003 --out docs/deform-trace.png [--set k=v]

Each row: input | instruction | expected | x̂₀ after PBSI steps T … T' | edited; the JSON
beside the picture holds each step's η and loss terms (at the step's last iterate).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from PIL import Image

import dragnext.stages
from bench.cases import make_case
from bench.run import item_of
from dragnext.config import build_config, parse_overrides
from dragnext.ddim import predict_x0
from dragnext.edit import edit
from dragnext.features import FeatureMap
from dragnext.geometry import eta
from dragnext.model import load_model, model_preset
from dragnext.pbsi import item_geometry, keep_loss, region_loss, x0_at, x0_reference
from dragnext.preview import enlarge, overlay
from dragnext.resize import tensor_to_image
from fixture import FIXTURE_MODEL


def traced_pbsi(record: list, real=dragnext.stages.pbsi):
    """`pbsi` that records each step's last iterate (z_t and its ε) and its reference."""
    def run(trajectory, drags, editable, schedule, config, forward, **kwargs):
        def watched(z, t):
            eps, F = forward(z, t)
            record.append({"t": t, "z": z.detach(), "eps": eps.detach(), "F": F.detach()})
            return eps, F

        z = real(trajectory, drags, editable, schedule, config, watched, **kwargs)
        record.append({"context": (trajectory, drags, editable, schedule, config)})
        return z
    return run


def steps_of(record: list, model, size: tuple[int, int]) -> tuple[list[Image.Image], list[dict]]:
    """Per PBSI step: x̂₀ of its last iterate, decoded at `size` (width, height), and the
    loss terms there."""
    trajectory, drags, editable, schedule, config = record[-1]["context"]
    calls = record[:-1]
    T = len(trajectory) - 1
    T_prime = T - config.steps + 1
    images, terms = [], []
    for t in range(T, T_prime - 1, -1):
        mine = [c for c in calls if c["t"] == t]
        ref, last = mine[0], mine[-1]  # the reference pass first, the step's final pass last
        alpha = schedule.alphas[t].to(last["z"].dtype)
        images.append(tensor_to_image(model.decode(predict_x0(last["z"], last["eps"], alpha)), *size))
        progress = eta(t, config.iterations, T, T_prime, config.iterations, config.eta_steps)
        f_size = ref["F"].size
        drags_f = [d.at(f_size) for d in drags[0]]
        x0_k = x0_at(schedule, last["z"], last["eps"], t, f_size)
        x0_ref = x0_reference(schedule, ref["z"], ref["eps"], t, f_size, trajectory[0], config.x0_reference)
        keeping = config.model_copy(update={"keep_weight": 1.0})
        [here] = item_geometry(drags_f, editable[0], [progress], x0_k.device, keeping, None, f_size)
        terms.append({"t": t, "eta": progress,
                      "region_features": float(region_loss(last["F"], ref["F"], here)),
                      "region_x0": float(region_loss(FeatureMap((x0_k,), f_size),
                                                     FeatureMap((x0_ref,), f_size), here)),
                      "keep": float(keep_loss(x0_k, x0_ref, here.keep))})
    return images, terms


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("cases", nargs="+", help="case ids, e.g. deform-1004")
    parser.add_argument("--model", default=str(FIXTURE_MODEL))
    parser.add_argument("--set", action="append", default=[])
    parser.add_argument("--out", default="out/trace.png")
    args = parser.parse_args(argv)
    model = load_model(args.model)
    config = build_config(None, parse_overrides(args.set), preset=model_preset(args.model))
    rows, report = [], {}
    for case_id in args.cases:
        kind, seed = case_id.rsplit("-", 1)
        case = make_case(kind, int(seed))
        item = item_of(case)
        record: list = []
        real = dragnext.stages.pbsi
        dragnext.stages.pbsi = traced_pbsi(record)
        try:
            result = edit(item.image, item.instruction, model, config, item_id=case_id)
        finally:
            dragnext.stages.pbsi = real
        with torch.no_grad():
            images, terms = steps_of(record, model, item.size)
        expected = Image.fromarray(case.expected.render())
        rows.append([item.image, overlay(item), expected, *images, result.image])
        report[case_id] = terms
    size = enlarge(rows[0][0]).width
    sheet = Image.new("RGB", (len(rows[0]) * (size + 2), len(rows) * (size + 2)), "white")
    for r, row in enumerate(rows):
        for c, panel in enumerate(row):
            sheet.paste(enlarge(panel), (c * (size + 2), r * (size + 2)))
    sheet.save(args.out)
    Path(args.out).with_suffix(".json").write_text(json.dumps(report, indent=2))
    print(args.out)


if __name__ == "__main__":
    main()
