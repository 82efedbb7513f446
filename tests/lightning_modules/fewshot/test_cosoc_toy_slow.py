"""COSOC against the cosine-classifier baseline at the full toy configs, over seeds 0, 1, 2 (make test-slow, about
16 minutes on 2 cores). Both start from the same Exemplar checkpoint of their seed and train the same 12 epochs:
COSOC with fusion sampling from the COS file and SOC at test time (configs/cosoc/toy_cosoc.yaml), the baseline with
plain crops and centre-view prototypes (configs/cosoc/toy_cc.yaml with
--model.init_args.backbone.init_args.pretrained). Toy test split: backgrounds carry no class information. docs/cosoc.md
("Toy results") records the per-seed numbers. They do not tell the two apart: the paired difference was +4.9 +- 3.5
on 2026-12-02 and -0.3 +- 3.4 on 2026-12-04, at code whose whole make test-slow run had passed a positive-sign
assertion on 2026-12-03 (the machine or the resolved packages differed), so the test asserts no winner: COS keeps object
crops, both models learn well above chance, and the per-seed table is printed."""

from __future__ import annotations

import json
import statistics

import pytest
import torch

from datamodules.toy.fewshot_scenes import cos_object_share
from experiments.cli import main as cli_main

SEEDS = (0, 1, 2)


def chain(tmp_path, seed: int) -> dict[str, float]:
    """Exemplar -> COS -> COSOC, and the baseline from the same Exemplar checkpoint; returns the test accuracies
    and COS's object share."""
    root, runs, cos_file = tmp_path / "data", tmp_path / f"runs{seed}", tmp_path / f"cos{seed}.pt"
    common = ["--runs_dir", str(runs), "--data.init_args.root", str(root), "--trainer.enable_progress_bar", "false",
              "--seed_everything", str(seed)]  # fmt: skip
    exemplar = str(runs / "ex" / "version_*" / "checkpoints" / "last.ckpt")
    start_from = ["--model.init_args.backbone.init_args.pretrained", exemplar]  # the Exemplar backbone
    cli_main(["fit", "--config", "configs/cosoc/toy_exemplar.yaml", *common, "--run_name", "ex"])
    cli_main(["predict", "--config", "configs/cosoc/toy_cos.yaml", *common, "--run_name", "cos",
              *start_from, "--model.init_args.output", str(cos_file)])  # fmt: skip
    share = cos_object_share(torch.load(cos_file, weights_only=True), root, size=48)
    cli_main(["fit", "--config", "configs/cosoc/toy_cosoc.yaml", *common, "--run_name", "cosoc",
              *start_from, "--data.init_args.cos_file", str(cos_file),
              "--test_after_fit", "true"])  # fmt: skip
    cli_main(["fit", "--config", "configs/cosoc/toy_cc.yaml", *common, "--run_name", "cc",
              *start_from, "--test_after_fit", "true"])  # fmt: skip

    def test_acc(name: str) -> float:
        return json.loads(next((runs / name).glob("version_*/metrics.json")).read_text())["test"]["test/acc"]

    return {"cosoc": test_acc("cosoc"), "cc": test_acc("cc"), "cos_top1": share["top1"], "random": share["random"]}


@pytest.mark.slow
def test_toy_cos_finds_objects_and_cosoc_and_its_baseline_learn_over_seeds(tmp_path):
    rows = [chain(tmp_path, seed) for seed in SEEDS]
    for seed, row in zip(SEEDS, rows, strict=True):
        print(f"seed {seed}: COSOC {row['cosoc']:.2f}, cosine classifier {row['cc']:.2f}, "
              f"COS top-1 object share {row['cos_top1']:.2f} (random crops {row['random']:.2f})")  # fmt: skip
    cosoc, cc = [r["cosoc"] for r in rows], [r["cc"] for r in rows]
    diff = [a - b for a, b in zip(cosoc, cc, strict=True)]
    print(f"means: COSOC {statistics.mean(cosoc):.2f} +- {statistics.stdev(cosoc):.2f}, cosine classifier "
          f"{statistics.mean(cc):.2f} +- {statistics.stdev(cc):.2f}, difference {statistics.mean(diff):.2f} +- "
          f"{statistics.stdev(diff):.2f}")  # fmt: skip
    assert all(r["cos_top1"] > r["random"] + 0.1 for r in rows), rows  # measured: 0.76-0.81 against 0.57
    assert min(cosoc + cc) > 20.0 + 5.0, (cosoc, cc)  # chance is 20 % (5-way)
    # no assertion on diff: on this toy the paired difference is inside its noise (docs/cosoc.md, "Toy results":
    # +4.87 +- 3.45 measured 2026-12-02, -0.34 +- 3.42 on 2026-12-04, same seeds)
