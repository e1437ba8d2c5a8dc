"""aten ops and host-device synchronisations per UNet pass, counted on the meta device for
an SD1.5-size UNet at 64×64 latents (512 px), no GPU needed: the plain UNet, the per-item
LoRA as it is applied now (`dragnext.adapters`: folded for one item, grouped for several,
low-rank while training) and as it was before (a per-sample forward hook on each
projection, `per_sample_hook`, kept here as the reference). On a GPU that waits on kernel
launches at batch 1, time per pass follows these counts. Prints a table, writes JSON.

    python -m bench.op_counts [--json docs/op-counts.json] [--tiny]
"""

from __future__ import annotations

import argparse
import json
import sys
from contextlib import contextmanager, nullcontext
from pathlib import Path

import torch

from dragnext.adapters import Adapters, target_layers, training
from dragnext.conditioning import Conditioning
from dragnext.device_traffic import DeviceTraffic, on_meta
from dragnext.lora import lora_applied
from dragnext.tiny_model import in_memory_model


@contextmanager
def per_sample_hook(unet, adapters: Adapters):
    """The per-item LoRA before it moved into the projections: y_n = W x_n + B_b A_b x_n for
    item b's samples, added by a forward hook in fp32 on every projection."""
    def hook(A, B):
        def add(_module, inputs, output):
            x = inputs[0]
            x = x.reshape(A.shape[0], -1, x.shape[-1]).float()  # (B, c·tokens, in)
            h = torch.einsum("bli,bri->blr", x, A)
            return output + torch.einsum("blr,bor->blo", h, B).reshape(output.shape).to(output.dtype)
        return add

    handles = [layer.register_forward_hook(hook(adapters.down[n], adapters.up[n]))
               for n, layer in adapters.layers(unet).items()]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def random_weights(unet, count: int, rank: int = 4, seed: int = 0, up: float = 1 / 20) -> list[dict]:
    """Random adapters on the CPU (B is zero until trained; here its entries have std `up`)."""
    g = torch.Generator().manual_seed(seed)
    layers = target_layers(unet)
    return [{**{f"{n}.lora_A.weight": torch.randn(rank, layer.in_features, generator=g) / 4
                for n, layer in layers.items()},
             **{f"{n}.lora_B.weight": torch.randn(layer.out_features, rank, generator=g) * up
                for n, layer in layers.items()}}
            for _ in range(count)]


def count_pass(model, samples: int, items: int, applied, backward: bool, side: int = 64) -> dict:
    """Ops of one UNet forward (and its input or adapter backward) of `samples` rows of
    side × side latents."""
    z = torch.randn(samples, 4, side, side, device="meta", requires_grad=backward)
    cond = Conditioning.cat([model.embed_prompt("a photo")] * items)
    t = torch.full((samples,), 500, device="meta")
    traffic = DeviceTraffic()
    with applied, traffic:
        out = model.unet_output(z, t, cond)
        if backward:
            traffic.mark("backward")
            out.sum().backward()
    return {"forward": traffic.ops["start"], "backward": traffic.ops.get("backward", 0),
            "syncs": sum(traffic.syncs.values()), "uploads": sum(traffic.uploads.values())}


def measure(model, side: int) -> dict[str, dict]:
    unet, device = model.unet, model.device
    rows: dict[str, dict] = {}
    for items in (1, 4):
        weights = random_weights(unet, items)
        for backward in (False, True):
            kind = "forward+input backward" if backward else "forward"
            rows[f"batch {items}, {kind}: plain UNet"] = count_pass(
                model, items, items, nullcontext(), backward, side)
            rows[f"batch {items}, {kind}: adapters now"] = count_pass(
                model, items, items, lora_applied(model, weights), backward, side)
            rows[f"batch {items}, {kind}: hook before"] = count_pass(
                model, items, items, per_sample_hook(unet, Adapters.stack(weights, device)), backward, side)
    for items in (1, 4):  # a LoRA step: 4 views of each item, the adapters' backward
        adapters = Adapters.initial(unet, 16, 0, items)
        rows[f"LoRA step, {items} item(s) x 4 views: adapters now"] = count_pass(
            model, 4 * items, items, training(unet, adapters), True, side)
        rows[f"LoRA step, {items} item(s) x 4 views: hook before"] = count_pass(
            model, 4 * items, items, per_sample_hook(unet, adapters), True, side)
    return rows


def table(rows: dict[str, dict]) -> str:
    lines = [f"{'pass':62}{'forward':>9}{'backward':>10}{'syncs':>7}{'uploads':>9}"]
    lines += [f"{name:62}{r['forward']:>9}{r['backward']:>10}{r['syncs']:>7}{r['uploads']:>9}"
              for name, r in rows.items()]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", default="out/op-counts.json")
    parser.add_argument("--tiny", action="store_true", help="the tiny test model instead of SD1.5's size")
    args = parser.parse_args()
    model = on_meta(in_memory_model("sd15", "cpu", torch.float32, full_size=not args.tiny))
    side = 16 if args.tiny else 64
    rows = measure(model, side)
    print(table(rows))
    path = Path(args.json)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"model": model.source.model, "latent": side,
                                "passes": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
