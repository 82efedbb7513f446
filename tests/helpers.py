"""Test-only helpers: callbacks that runs load by class path (``--trainer.callbacks+=tests.helpers.KillAfterEpoch``),
the reference goldens' loader, the toy learning tests' validate-fit-validate loop, and the tiny detectors and batches
of the detection tests."""

import os
import signal
from pathlib import Path

import lightning as L
import pytest
import torch

SHARED = Path(os.environ.get("VISION_SUITE_SHARED", Path(__file__).resolve().parents[1].parent / "shared"))


def load_golden(name: str) -> dict:
    """A reference golden from ``$VISION_SUITE_SHARED/golden/`` (default ``../shared/golden/`` beside the checkout):
    inputs and the outputs the authors' released code computes on them. Skips the test, naming the path, when the
    file is absent (the suite never needs ``../shared`` at run time)."""
    path = SHARED / "golden" / name
    if not path.is_file():
        pytest.skip(f"reference golden {path} is absent (set VISION_SUITE_SHARED to the folder holding golden/)")
    return torch.load(path, weights_only=False, map_location="cpu")


class KillAfterEpoch(L.Callback):
    """SIGKILLs the process once training epoch ``epoch`` (0-based) is over and its checkpoints are written (at the
    start of the next epoch): the hardest way a job can die (no handler, no cleanup), as on a node failure."""

    def __init__(self, epoch: int = 0) -> None:
        self.epoch = epoch

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        if trainer.current_epoch == self.epoch + 1:
            os.kill(os.getpid(), signal.SIGKILL)


class RecordRankState(L.Callback):
    """Writes each rank's final weights and the sample indices its sampler gave it to ``$RANK_STATE_DIR``."""

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        sampler = trainer.train_dataloader.sampler
        self.indices = [int(i) for i in sampler]

    def on_train_end(self, trainer, pl_module) -> None:
        assert self.indices, "the rank's sampler gave no training indices"
        out = os.environ["RANK_STATE_DIR"]
        state = {k: v.detach().cpu() for k, v in pl_module.state_dict().items()}
        torch.save({"state_dict": state, "indices": self.indices, "world_size": trainer.world_size,
                    "num_nodes": trainer.num_nodes}, f"{out}/rank{trainer.global_rank}.pt")  # fmt: skip


def validate_fit_validate(module: L.LightningModule, datamodule: L.LightningDataModule, steps: int) -> tuple:
    """(validation metrics before, after) ``steps`` CPU training steps without loggers, checkpoints or validation in
    between: the toy learning tests' "trained beats untrained" measurement."""

    def validate() -> dict:
        judge = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False)
        return judge.validate(module, datamodule, verbose=False)[0]

    trainer = L.Trainer(accelerator="cpu", max_steps=steps, max_epochs=-1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                        limit_val_batches=0)  # fmt: skip
    before = validate()
    trainer.fit(module, datamodule)
    return before, validate()


# ---- tiny detectors and batches shared by the detection tests (backbones, cascade, module) ----
ITPN = "itpn_base_3324_patch16_224"
# tiny HiViT (as in tests/test_hivit.py), rpe off as in the official pixel-B det recipe (variable image sizes)
TOY_HIVIT = dict(img_size=64, embed_dim=64, mlp_depth=1, depth=2, num_heads=2, fpn_dim=32, rpe=False)
SMALL_RCNN = dict(
    min_size=64,
    max_size=64,
    rpn_pre_nms_top_n_train=200,
    rpn_post_nms_top_n_train=100,
    rpn_pre_nms_top_n_test=100,
    rpn_post_nms_top_n_test=50,
    box_batch_size_per_image=16,
    box_detections_per_img=10,
    box_score_thresh=0.0,
    head_channels=16,  # the heads dominate a CPU step; 256 / 1024 by default
    representation_size=64,
)


def box_target(boxes: list[list[float]], labels: list[int], size: int = 64) -> dict[str, torch.Tensor]:
    """A torchvision target whose masks fill the boxes."""
    b = torch.tensor(boxes)
    masks = torch.zeros(len(boxes), size, size, dtype=torch.uint8)
    for i, (x0, y0, x1, y1) in enumerate(b.int().tolist()):
        masks[i, y0:y1, x0:x1] = 1
    return {"boxes": b, "labels": torch.tensor(labels, dtype=torch.int64), "masks": masks}


def toy_batch(size: int = 64) -> tuple[list[torch.Tensor], list[dict]]:
    """Two random images with one and two boxes (labels 1, then 1 and 2)."""
    g = torch.Generator().manual_seed(0)
    images = [torch.rand(3, size, size, generator=g) for _ in range(2)]
    targets = []
    for boxes in ([[4.0, 6.0, 40.0, 44.0]], [[10.0, 8.0, 30.0, 50.0], [34.0, 30.0, 60.0, 62.0]]):
        targets.append(box_target(boxes, list(range(1, len(boxes) + 1)), size))
    return images, targets
