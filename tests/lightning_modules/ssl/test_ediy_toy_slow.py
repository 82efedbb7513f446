"""E-DIY's toy claims over seeds 0, 1, 2 (make test-slow, about 25 minutes on 2 cores), with the commands of
`make reproduce-ediy SCALE=toy`: BYOL and E-DIY pre-training (configs/ediy/toy_{byol,ediy}.yaml, 10 epochs each,
--seed_everything 0, 1, 2), each evaluated frozen (configs/evaluation/toy_resnet.yaml: linear probe, 20-NN, dense
per-region probe), against a random-init encoder evaluated with evaluation seeds 0, 1, 2. docs/ediy.md ("Toy
comparison") has the per-seed table. What the seeds support, and what is asserted on their means:

- E-DIY beats random init in the linear probe, and beats BYOL there and on dense mIoU;
- BYOL against random init is inside the seed noise at this budget (docs: 15.8 +- 2.2 against 14.1 +- 1.3; rerun
  16.2 +- 2.6), so the test asserts only that BYOL's mean is not below random init's by more than the seeds' spread.

The seed-0 BYOL and E-DIY checkpoints then fine-tune the toy R-18-C4 Mask R-CNN (configs/downstream/
toy_mask_rcnn_c4.yaml), which must detect (box and mask AP above zero); the BYOL / E-DIY AP comparison at this scale
is recorded in docs/downstream.md, not asserted."""

from __future__ import annotations

import json
import statistics

import pytest
import yaml

from experiments.cli import main as cli_main
from experiments.configs import load_config
from experiments.evaluate import main as evaluate_main

SEEDS = (0, 1, 2)
EVAL = "configs/evaluation/toy_resnet.yaml"
KEYS = ("test/linear_top1", "test/knn_top1", "test/dense_cell_acc", "test/dense_miou", "test/dense_pointing")


def read_test(runs, name: str) -> dict:
    return json.loads(next((runs / name).glob("version_*/metrics.json")).read_text())["test"]


def mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.mean(values), statistics.stdev(values)


def eval_config(tmp_path, seed: int) -> str:
    """The toy evaluation config with this test's own data folders (the same toy data as the repository's)."""
    config = load_config(EVAL)
    config["seed"] = seed
    config["classification"]["init_args"]["root"] = str(tmp_path / "shapes")
    config["dense"]["root"] = str(tmp_path / "dense_scenes")
    path = tmp_path / f"eval_s{seed}.yaml"
    path.write_text(yaml.safe_dump(config))
    return str(path)


@pytest.mark.slow
def test_toy_ediy_over_seeds_and_detection(tmp_path):
    """Data, runs and evaluation configs all under tmp_path: nothing shared with another test (any order, any
    worker)."""
    runs = tmp_path / "runs"
    shapes = ["--data.init_args.root", str(tmp_path / "shapes")]
    scores = {"random": [], "byol": [], "ediy": []}
    for seed in SEEDS:
        config = eval_config(tmp_path, seed)
        for method in ("byol", "ediy"):
            cli_main(["fit", "--config", f"configs/ediy/toy_{method}.yaml", "--runs_dir", str(runs),
                      "--run_name", f"toy_{method}_s{seed}", "--seed_everything", str(seed),
                      "--trainer.enable_progress_bar", "false", *shapes])  # fmt: skip
            ckpt = str(next((runs / f"toy_{method}_s{seed}").glob("version_*/checkpoints/last.ckpt")))
            assert evaluate_main(["--config", config, "--ckpt", ckpt, "--runs_dir", str(runs),
                                  "--run_name", f"eval_{method}_s{seed}"]) == 0  # fmt: skip
            scores[method].append(read_test(runs, f"eval_{method}_s{seed}"))
        assert evaluate_main(["--config", config, "--random_init",
                              "--runs_dir", str(runs), "--run_name", f"eval_random_s{seed}"]) == 0  # fmt: skip
        scores["random"].append(read_test(runs, f"eval_random_s{seed}"))
    stats = {m: {k: mean_std([s[k] for s in rows]) for k in KEYS} for m, rows in scores.items()}
    for method, rows in scores.items():
        print(method, ", ".join(f"{k} {m:.3f} +- {s:.3f}" for k, (m, s) in stats[method].items()),
              "| per seed (linear / mIoU):", [(round(r[KEYS[0]], 3), round(r[KEYS[3]], 3)) for r in rows])  # fmt: skip
    linear = {m: stats[m]["test/linear_top1"] for m in scores}
    miou = {m: stats[m]["test/dense_miou"] for m in scores}
    assert linear["ediy"][0] > linear["random"][0] + linear["ediy"][1] + linear["random"][1], linear
    assert linear["ediy"][0] > linear["byol"][0] + linear["ediy"][1], linear
    assert miou["ediy"][0] > miou["byol"][0], miou
    assert linear["byol"][0] >= linear["random"][0] - max(linear["byol"][1], linear["random"][1]), linear
    for method in ("byol", "ediy"):
        ckpt = str(runs / f"toy_{method}_s0/version_*/checkpoints/last.ckpt")
        cli_main(["fit", "--config", "configs/downstream/toy_mask_rcnn_c4.yaml", "--runs_dir", str(runs),
                  "--run_name", f"det_{method}", "--trainer.enable_progress_bar", "false", "--test_after_fit", "true",
                  "--model.init_args.pretrained", ckpt, "--data.init_args.root", str(tmp_path / "coco")])  # fmt: skip
        det = read_test(runs, f"det_{method}")
        print(f"{method} toy R-18-C4 Mask R-CNN: box AP {det['test/bbox_mAP']:.4f}, mask AP {det['test/segm_mAP']:.4f}")
        assert det["test/bbox_mAP"] > 0.0 and det["test/segm_mAP"] > 0.0
