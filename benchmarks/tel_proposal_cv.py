"""TEL proposal rule chosen without fitting the test split: cross-validation over the official test movies.

History (docs/tel.md): since 2026-12-02 the official config's choices are made on held-out TRAINING movies by
``benchmarks/tel_select.py``; this script documents how the earlier, test-chosen proposal rule was checked.

    python benchmarks/tel_proposal_cv.py --ckpt runs/subtitles_official/version_0/checkpoints/best.ckpt \
        --root /path/to/tel [--folds 2] [--seeds 0 1 2] [--markdown docs/tel.md]

The released TEL data has temporal labels only in the test split, so a rule that turns per-subtitle probabilities
into scored instances (thresholds, whole-clip proposals) cannot be chosen on a validation split. This script runs the
trained model over the test split once, then for each seed splits the 13 test movies into ``--folds`` folds; for
each fold it picks, among the candidate rules fixed below, the one with the best instance mAP (tIoU 0.1:0.5) on the
other folds and scores that rule on the held-out fold. The reported held-out number pools every fold's predictions
under its own choice: no clip is scored by a rule that was chosen on it. The class-frequency prior (fitted on the
training split) has no choice to make and is scored on the same folds. Every rule's full-test number is printed too.

Candidate rules (all use relative thresholds and the clip-level score; NMS at tIoU 0.6):

* ``runs``: runs at thresholds 0.1:0.1:0.9, scored by mean probability x clip probability;
* ``runs+span``: the same with threshold 0, which adds the whole clip scored like a run;
* ``runs+clip``: ``runs`` plus the whole clip scored by the clip probability alone (ranked first in its clip);
* ``clip``: only the whole clip per class, scored by the clip probability (the prior's proposals, model-ranked).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from datamodules.video_subtitles import VideoSubtitlesDataModule  # noqa: E402
from lightning_modules.emotion.losses import topk_mean  # noqa: E402
from lightning_modules.emotion.metrics import InstanceMAP  # noqa: E402
from lightning_modules.emotion.proposals import ground_truth, proposals  # noqa: E402

RUNS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
RULES = {
    "runs": dict(thresholds=RUNS, whole_clip=False),
    "runs+span": dict(thresholds=(0.0, *RUNS), whole_clip=False),
    "runs+clip": dict(thresholds=RUNS, whole_clip=True),
    "clip": dict(thresholds=(), whole_clip=True),
}


@torch.no_grad()
def collect(model, loader, ratio: float) -> list[dict]:
    """Per test batch: the model's unit probabilities and the tensors the proposals and ground truth need."""
    out = []
    for batch in loader:
        probs = model.unit_probs(batch).float()
        mask = batch["unit_mask"]
        out.append(dict(probs=probs, clip=topk_mean(probs, mask, ratio), starts=batch["starts"], ends=batch["ends"],
                        mask=mask, ids=batch["index"], unit_labels=batch["unit_labels"]))  # fmt: skip
    return out


def rows(batches: list[dict], rule: dict | None, nms: float) -> tuple[torch.Tensor, torch.Tensor]:
    """All predictions and ground truth of ``batches`` under ``rule`` (``None``: the prior's whole-clip rows)."""
    preds, gts = [], []
    for b in batches:
        if rule is None:  # constant scores: every threshold run is the whole clip
            preds.append(proposals(b["probs"], b["starts"], b["ends"], b["mask"], b["ids"], RUNS, nms, True))
        else:
            preds.append(proposals(b["probs"], b["starts"], b["ends"], b["mask"], b["ids"], rule["thresholds"], nms,
                                   True, b["clip"], rule["whole_clip"]))  # fmt: skip
        gts.append(ground_truth(b["unit_labels"], b["starts"], b["ends"], b["mask"], b["ids"]))
    return torch.cat(preds), torch.cat(gts)


def within(rows: torch.Tensor, clips: set[int]) -> torch.Tensor:
    """Rows whose first column (the clip id) is one of ``clips``."""
    return torch.isin(rows[:, 0].long(), torch.tensor(sorted(clips), dtype=torch.long))


def instance_map(pred: torch.Tensor, gt: torch.Tensor, clips: set[int], num_classes: int) -> float:
    metric = InstanceMAP(num_classes)
    metric.update(pred[within(pred, clips)], gt[within(gt, clips)])
    return float(metric.compute()["map"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ckpt", required=True)
    parser.add_argument("--root", required=True, help="folder with train.json and test.json")
    parser.add_argument("--folds", type=int, default=2)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--json", default=None, help="write the numbers here")
    args = parser.parse_args(argv)

    from lightning_modules.emotion.module import TemporalEmotionLocalizer
    from lightning_modules.emotion.prior import ClassFrequencyPrior

    model = TemporalEmotionLocalizer.load_from_checkpoint(args.ckpt, map_location="cpu").eval()
    dm = VideoSubtitlesDataModule(root=args.root, batch_size=args.batch_size, num_workers=0, pin_memory=False)
    dm.setup("test")
    loader = dm.test_dataloader()
    clips = dm.test_set.clips
    C, nms = model.num_classes, model.cfg["nms"]
    print(f"scoring {len(clips)} test clips ...", file=sys.stderr)
    batches = collect(model, loader, model.cfg["ratio"])
    prior = ClassFrequencyPrior(num_classes=C)
    prior.fit_prior(np.stack([c.labels[:C] for c in dm.clips("train")]))
    prior_batches = [dict(b, probs=prior.unit_probs({"unit_mask": b["mask"], "starts": b["starts"]})) for b in batches]

    by_rule = {name: rows(batches, rule, nms) for name, rule in RULES.items()}
    prior_rows = rows(prior_batches, None, nms)
    movies = sorted({c.movie for c in clips})
    clip_ids = {m: {i for i, c in enumerate(clips) if c.movie == m} for m in movies}
    everything = set(range(len(clips)))
    result = {"full_test": {name: instance_map(*r, everything, C) for name, r in by_rule.items()}}
    result["full_test"]["prior"] = instance_map(*prior_rows, everything, C)
    result["seeds"] = []
    for seed in args.seeds:
        order = np.random.default_rng(seed).permutation(len(movies))
        folds = [set().union(*(clip_ids[movies[i]] for i in part)) for part in np.array_split(order, args.folds)]
        chosen, held_pred, held_gt, prior_folds = [], [], [], []
        for k, held in enumerate(folds):
            rest = everything - held
            scores = {name: instance_map(*r, rest, C) for name, r in by_rule.items()}
            best = max(scores, key=scores.get)
            chosen.append(best)
            pred, gt = by_rule[best]
            held_pred.append(pred[within(pred, held)])
            held_gt.append(gt[within(gt, held)])
            prior_folds.append(instance_map(*prior_rows, held, C))
            print(f"seed {seed} fold {k}: chose {best} on the other folds ({scores})", file=sys.stderr)
        pooled = instance_map(torch.cat(held_pred), torch.cat(held_gt), everything, C)
        result["seeds"].append(dict(seed=seed, chosen=chosen, held_out_model=pooled, prior=result["full_test"]["prior"],
                                    prior_per_fold=prior_folds))  # fmt: skip
    result["held_out_model_mean"] = statistics.mean(s["held_out_model"] for s in result["seeds"])
    print(json.dumps(result, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
