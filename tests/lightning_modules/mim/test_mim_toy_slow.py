"""Toy MIM pre-training for minutes, over seeds 0, 1, 2 (``make test-slow``, about 25 minutes): the loss falls
steadily and a linear probe on the pre-trained encoder beats the same probe on the randomly initialised encoder (seed
means), for iTPN's pixel recipe and for its CLIP recipe with a tiny teacher (a small CLIP vision tower trained on the
toy shapes, datamodules/toy/clip_teacher.py). Numbers measured here go to docs/itpn.md."""

from __future__ import annotations

import statistics

import pytest
import torch

from tests.lightning_modules.mim.test_mim_toy import losses, pretrain, probe_accuracy

FULL_TOY = dict(toy_num_classes=10, toy_train_per_class=300, toy_eval_per_class=60, toy_img_size=64)


SEEDS = (0, 1, 2)


@pytest.mark.slow
@pytest.mark.parametrize(
    "config, epochs", [("configs/itpn/toy_pixel.yaml", 20), ("configs/itpn/toy_clip.yaml", 8)], ids=["pixel", "clip"]
)
def test_toy_pretraining_beats_random_init_in_a_linear_probe(config, epochs, tmp_path):
    """Over seeds 0, 1, 2 (the pre-training's --seed_everything; the random-init encoder drawn with the same seed):
    the seed mean of the pre-trained probe exceeds the random-init mean by more than the two standard deviations."""
    torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
    root = tmp_path / "shapes"
    pretrained, random_init = [], []
    for seed in SEEDS:
        extra = ["--data.init_args.batch_size", "64", "--seed_everything", str(seed)]
        if "clip" in config:  # one toy teacher (the target) for every seed, trained on the first
            extra += ["--model.init_args.teacher.init_args.name_or_path", str(tmp_path / "teacher")]
            extra += ["--model.init_args.teacher.init_args.toy_data_root", str(root)]
        run = pretrain(config, root, tmp_path / f"runs{seed}", epochs, extra, data=FULL_TOY)
        val = losses(run, "val/loss")
        assert len(val) == epochs and val[-1] < 0.8 * val[0], val
        assert all(b <= a * 1.02 for a, b in zip(val, val[1:], strict=False)), f"validation loss not steady: {val}"
        pretrained.append(probe_accuracy(config, root, run / "checkpoints" / "last.ckpt", data=FULL_TOY))
        torch.manual_seed(seed)
        random_init.append(probe_accuracy(config, root, None, data=FULL_TOY))
        print(f"{config} seed {seed}: val loss {[round(v, 4) for v in val]}; probe {pretrained[-1]:.3f} vs random "
              f"init {random_init[-1]:.3f}")  # fmt: skip
    (p, ps), (r, rs) = [(statistics.mean(v), statistics.stdev(v)) for v in (pretrained, random_init)]
    print(f"{config}: probe {p:.3f} +- {ps:.3f} vs random init {r:.3f} +- {rs:.3f}")
    assert p > r + ps + rs, (pretrained, random_init)
