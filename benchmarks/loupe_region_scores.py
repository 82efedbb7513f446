"""Which token-level score finds objects? Scores of known boxes on the toy test scenes.

    python benchmarks/loupe_region_scores.py --ckpt runs/toy_itc/version_0/checkpoints/last.ckpt [--images 30]
        [--samples 16] [--payoff encoder|pooled]

For each toy test image and its first caption, five boxes are scored with the model's token-level payoff: the
tight box of the image's first object (from the scene metadata), a background box of the same size away from every
object, the object box twice as large, the object box half as wide, and the whole image. Scores: the Shapley
interaction ``I([S])`` (LOUPE's term), the region's Shapley value as one player ``phi([S])``, and its excess over
the even share of its area, ``phi([S]) - |S|/n (v(N) - v(0))``. Printed as a Markdown table: the mean of each score
per box, how often the object box beats the background box, and how often each box has the best score of the five.
A checkpoint of either retrieval module works (the ITC baseline or LOUPE).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from datamodules.captions import CaptionsDataModule
from lightning_modules.retrieval.loupe import box_to_patch_mask, masked_image_payoff, pooled_similarity
from lightning_modules.retrieval.module import DualEncoderRetrieval
from lightning_modules.retrieval.shapley import mc_coalition_value, mc_interaction

BOXES = ("object", "background", "object x2", "half object", "whole image")


def load(ckpt: str) -> DualEncoderRetrieval:
    state = torch.load(ckpt, map_location="cpu", weights_only=False)
    name = state["hyper_parameters"].get("_class_path", "")
    if "LoupeRetrieval" in name or any(k.startswith("region_generator.") for k in state["state_dict"]):
        from lightning_modules.retrieval.loupe import LoupeRetrieval

        return LoupeRetrieval.load_from_checkpoint(ckpt, map_location="cpu").eval()
    return DualEncoderRetrieval.load_from_checkpoint(ckpt, map_location="cpu").eval()


def boxes_for(objects: list[dict], size: int) -> torch.Tensor | None:
    first = objects[0]
    side = 2 * (0.16 if first["size"] == "large" else 0.10)
    obj = torch.tensor([first["x"] / size, first["y"] / size, side, side])
    far = [
        (cx, cy) for cy in (1 / 6, 0.5, 5 / 6) for cx in (1 / 6, 0.5, 5 / 6)
        if all(abs(cx - o["x"] / size) + abs(cy - o["y"] / size) > 0.3 for o in objects)
    ]  # fmt: skip
    if not far:
        return None
    background = torch.tensor([*far[0], side, side])
    return torch.stack([obj, background, obj * torch.tensor([1, 1, 2, 2]), obj * torch.tensor([1, 1, 0.5, 1]),
                        torch.tensor([0.5, 0.5, 1.0, 1.0])]).clamp(max=1.0)  # fmt: skip


@torch.no_grad()
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ckpt", required=True)
    parser.add_argument("--root", default="data/toy_scenes")
    parser.add_argument("--images", type=int, default=30)
    parser.add_argument("--samples", type=int, default=16)
    parser.add_argument("--payoff", choices=("encoder", "pooled"), default="encoder")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    model = load(args.ckpt)
    data = CaptionsDataModule(root=args.root, dataset="toy", batch_size=args.images, num_workers=0,
                              img_size=model.image_encoder.patch_embed.img_size[0])  # fmt: skip
    data.prepare_data()
    data.setup("test")
    scenes = {im["imgid"]: im for im in json.loads((Path(args.root) / "dataset_toy.json").read_text())["images"]}
    batch = next(iter(data.test_dataloader()))
    firsts = [int((batch["text_image_ids"] == i).nonzero()[0]) for i in batch["image_ids"].tolist()]
    captions = [batch["captions"][k] for k in firsts]
    image_emb, tokens = model.encode_images(batch["image"])
    text, _, _ = model.encode_texts(captions)
    grid = tuple(model.image_encoder.patch_embed.grid_size)
    scores = {k: [] for k in ("interaction", "phi", "excess")}
    used = 0
    for b, image_id in enumerate(batch["image_ids"].tolist()):
        scene = scenes[image_id]
        boxes = boxes_for(scene["objects"], data.img_size)
        if boxes is None:
            continue
        used += 1
        masks = box_to_patch_mask(boxes, grid).unsqueeze(0)  # [1, 5, n]
        if args.payoff == "encoder":
            encode = lambda x: model.encode_images(x)[0]  # noqa: E731
            v = masked_image_payoff(encode, batch["image"][b : b + 1], text[b : b + 1], grid)
        else:
            projected = model.image_proj(tokens[b : b + 1])
            v = lambda m, p=projected, t=text[b : b + 1]: pooled_similarity(m, p, t)  # noqa: E731
        inter, _ = mc_interaction(v, masks, args.samples, member_samples=2)
        phi, _ = mc_coalition_value(v, masks, args.samples)
        ends = v(torch.stack([torch.ones_like(masks[:, 0]), torch.zeros_like(masks[:, 0])], 1))  # [1, 2]
        excess = phi - masks.float().mean(-1) * (ends[:, :1] - ends[:, 1:])
        for name, value in (("interaction", inter), ("phi", phi), ("excess", excess)):
            scores[name].append(value[0])
    print(f"{used} toy test images, {args.samples} orders, payoff {args.payoff}, checkpoint {args.ckpt}\n")
    print("| score | " + " | ".join(BOXES) + " | object > background | best of the five: " + " / ".join(BOXES) + " |")
    print("|---" * (len(BOXES) + 3) + "|")
    for name, values in scores.items():
        table = torch.stack(values)  # [images, 5]
        means = " | ".join(f"{m:+.3f}" for m in table.mean(0).tolist())
        beats = (table[:, 0] > table[:, 1]).float().mean().item()
        wins = torch.bincount(table.argmax(1), minlength=len(BOXES)).tolist()
        print(f"| {name} | {means} | {beats:.0%} | {' / '.join(map(str, wins))} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
