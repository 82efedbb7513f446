"""STT's toy comparisons over seeds 0, 1, 2 (make test-slow, about 12 minutes on 2 cores); docs/stt.md records the
per-seed numbers and the assertions are on the seed means with the margins those numbers support.

- Transfer: pre-training on synthetic pedestrians of domain a, then fine-tuning on the differently rendered domain b,
  against training on domain b from scratch (same model, data, schedule and evaluation; each seed pre-trains its
  own model).
- Ablation on configs/stt/toy.yaml (domain a): STT as configured, without the perception constraints
  (spatial_weight = temporal_weight = 0) and without the Global Transformer (global_depth 0)."""

from __future__ import annotations

import json
import statistics

import pytest

from experiments.cli import main as cli_main

SEEDS = (0, 1, 2)
COMMON = ["--trainer.enable_progress_bar", "false", "--test_after_fit", "true"]


def read_test(runs, name: str) -> dict:
    return json.loads(next((runs / name).glob("version_*/metrics.json")).read_text())["test"]


def mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.mean(values), statistics.stdev(values)


def summary(label: str, values: list[float]) -> str:
    return f"{label} {statistics.mean(values):.1f} +- {statistics.stdev(values):.1f} {[round(v, 1) for v in values]}"


@pytest.mark.slow
def test_toy_synthetic_pretraining_against_scratch_over_seeds(tmp_path):
    fine, scratch = [], []
    for seed in SEEDS:
        runs = tmp_path / f"runs{seed}"
        common = ["--runs_dir", str(runs), "--seed_everything", str(seed), *COMMON]
        cli_main(["fit", "--config", "configs/stt/toy_pretrain.yaml", *common, "--run_name", "pre",
                  "--data.init_args.root", str(tmp_path / "a")])  # fmt: skip
        pre = str(next((runs / "pre").glob("version_*/checkpoints/last.ckpt")))
        target = ["--data.init_args.root", str(tmp_path / "b")]
        cli_main(["fit", "--config", "configs/stt/toy_finetune.yaml", *common, *target, "--run_name", "fine",
                  "--model.init_args.init_from", pre])  # fmt: skip
        cli_main(["fit", "--config", "configs/stt/toy_scratch.yaml", *common, *target, "--run_name", "scratch"])
        fine.append(read_test(runs, "fine"))
        scratch.append(read_test(runs, "scratch"))
    for key in ("test/mAP", "test/rank1"):
        print(summary(f"{key} fine-tuned", [m[key] for m in fine]), "|",
              summary("scratch", [m[key] for m in scratch]))  # fmt: skip
    # measured (docs/stt.md): mAP 57.7 +- 5.8 against 24.9 +- 6.4, rank-1 56.7 +- 7.6 against 23.3 +- 10.4
    for key in ("test/mAP", "test/rank1"):
        (f, fs), (s, ss) = mean_std([m[key] for m in fine]), mean_std([m[key] for m in scratch])
        assert f > s + fs + ss, (key, fine, scratch)


VARIANTS = {
    "stt": [],
    "no_constraints": ["--model.init_args.spatial_weight", "0", "--model.init_args.temporal_weight", "0"],
    "no_global": ["--model.init_args.net.init_args.global_depth", "0"],
}


@pytest.mark.slow
def test_toy_stt_ablations_over_seeds(tmp_path):
    results = {name: [] for name in VARIANTS}
    for seed in SEEDS:
        for name, args in VARIANTS.items():
            runs = tmp_path / name
            cli_main(["fit", "--config", "configs/stt/toy.yaml", "--runs_dir", str(runs), "--run_name", f"s{seed}",
                      "--seed_everything", str(seed), "--data.init_args.root", str(tmp_path / "a"),
                      *COMMON, *args])  # fmt: skip
            results[name].append(read_test(runs, f"s{seed}"))
    for key in ("test/mAP", "test/rank1"):
        print(" | ".join(summary(f"{key} {name}", [m[key] for m in ms]) for name, ms in results.items()))
    # measured (docs/stt.md): mAP 56.5 +- 2.0 (STT), 58.3 +- 6.3 (no constraints), 51.3 +- 7.8 (no Global
    # Transformer): the differences are inside the seed noise, so none is asserted; every variant retrieves far above
    # chance (20 test identities: rank-1 by chance 5 %)
    for name, ms in results.items():
        assert mean_std([m["test/rank1"] for m in ms])[0] > 35.0, (name, ms)
