"""Toy MIM pre-training for minutes (``make test-slow``): the loss falls steadily and a linear probe on the
pre-trained encoder beats the same probe on the randomly initialised encoder, for iTPN's pixel recipe and for its
CLIP recipe with a tiny teacher (a small CLIP vision tower trained on the toy shapes, datamodules/toy/clip_teacher.py).
Numbers measured here go to docs/itpn.md."""

from __future__ import annotations

import pytest
import torch

from tests.test_mim_toy import losses, pretrain, probe_accuracy

FULL_TOY = dict(toy_num_classes=10, toy_train_per_class=300, toy_eval_per_class=60, toy_img_size=64)


@pytest.mark.slow
@pytest.mark.parametrize(
    "config, epochs", [("configs/itpn/toy_pixel.yaml", 20), ("configs/itpn/toy_clip.yaml", 8)], ids=["pixel", "clip"]
)
def test_toy_pretraining_beats_random_init_in_a_linear_probe(config, epochs, tmp_path):
    torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
    root = tmp_path / "shapes"
    extra = ["--data.init_args.batch_size", "64"]
    if "clip" in config:
        extra += ["--model.init_args.teacher.name_or_path", str(tmp_path / "teacher")]
        extra += ["--model.init_args.teacher.toy_data_root", str(root)]
    run = pretrain(config, root, tmp_path / "runs", epochs, extra, data=FULL_TOY)
    val = losses(run, "val/loss")
    assert len(val) == epochs and val[-1] < 0.8 * val[0], val
    assert all(b <= a * 1.02 for a, b in zip(val, val[1:], strict=False)), f"validation loss not steady: {val}"
    pretrained = probe_accuracy(config, root, run / "checkpoints" / "last.ckpt", data=FULL_TOY)
    random_init = probe_accuracy(config, root, None, data=FULL_TOY)
    print(f"{config}: val loss {[round(v, 4) for v in val]}; probe {pretrained:.3f} vs random init {random_init:.3f}")
    assert pretrained > random_init + 0.03, (pretrained, random_init)
