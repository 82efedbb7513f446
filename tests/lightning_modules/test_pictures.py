"""Every task's pictures land as PNG files under ``<run>/pictures/`` (the Trainer's ``default_root_dir``), named
``<stage>_<what>_epoch<NNN>.png``, from rank zero and never during the sanity check: the shared writer, then
classification (green / red borders), compression (through ``log_image_grid``), segmentation, re-ID ranked lists and
few-shot episodes, each on a real Trainer with tiny models."""

from __future__ import annotations

import lightning as L
import numpy as np
import pytest
import torch
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.trainer.states import RunningStage
from PIL import Image
from torch.utils.data import DataLoader

from lightning_modules.base import SuiteModule, picture_name, save_picture

GREEN_PX, RED_PX, BLUE_PX = (0, 191, 0), (217, 0, 0), (38, 89, 217)  # base.GREEN / RED / BLUE as saved


def make_trainer(root, **kwargs) -> L.Trainer:
    options = dict(accelerator="cpu", logger=CSVLogger(root, name="logs"), enable_progress_bar=False,
                   enable_model_summary=False, enable_checkpointing=False)  # fmt: skip
    return L.Trainer(default_root_dir=root, **{**options, **kwargs})


def read_png(path) -> np.ndarray:
    with Image.open(path) as image:
        assert image.format == "PNG" and image.mode == "RGB"
        return np.asarray(image)


def one_batch(batch) -> DataLoader:
    """A loader yielding ``batch`` itself once (no collation)."""
    return DataLoader([batch], batch_size=None)


def test_save_picture_writes_whole_pngs_only_when_the_run_logs(tmp_path):
    trainer = make_trainer(tmp_path)
    image = torch.zeros(3, 5, 7)
    image[0, 1, 2] = 1.0
    out = save_picture(trainer, "val_x_epoch002", image)
    assert out == tmp_path / "pictures" / "val_x_epoch002.png"
    pixels = read_png(out)
    assert pixels.shape == (5, 7, 3) and tuple(pixels[1, 2]) == (255, 0, 0) and pixels.sum() == 255
    grey = save_picture(trainer, "grey", torch.full((1, 4, 4), 128, dtype=torch.uint8))
    assert (read_png(grey) == 128).all()
    assert sorted(p.name for p in (tmp_path / "pictures").iterdir()) == ["grey.png", "val_x_epoch002.png"]
    assert picture_name("val/predictions", 3) == "val_predictions_epoch003"

    trainer.state.stage = RunningStage.SANITY_CHECKING
    assert save_picture(trainer, "sanity", image) is None
    module = SuiteModule()
    module.trainer = trainer
    assert module.log_image_grid("val/sanity", image[None]) is None
    silent = tmp_path / "no_logger"
    assert save_picture(L.Trainer(default_root_dir=silent, logger=False), "x", image) is None
    assert not (tmp_path / "pictures" / "sanity.png").exists() and not silent.exists()


def test_classification_frames_right_predictions_green_and_wrong_ones_red(tmp_path):
    from tests.lightning_modules.classification.test_classification import tiny_classifier

    torch.manual_seed(0)
    model = tiny_classifier(num_classes=4).eval()
    images = torch.rand(4, 3, 32, 32)
    with torch.no_grad():
        pred = model(images).argmax(-1)
    targets = torch.stack([pred[0], (pred[1] + 1) % 4, pred[2], (pred[3] + 1) % 4])
    make_trainer(tmp_path).validate(model, one_batch({"image": images, "target": targets}), verbose=False)
    pixels = read_png(tmp_path / "pictures" / "val_predictions_epoch000.png")
    # 4 tiles of 32 + 2 * 2 (border) pixels in one row, make_grid's 2-pixel padding around each
    assert pixels.shape == (2 + 36 + 2, 2 + 4 * (36 + 2), 3)
    corners = [tuple(pixels[2, 2 + 38 * i]) for i in range(4)]
    assert corners == [GREEN_PX, RED_PX, GREEN_PX, RED_PX]
    inside = torch.from_numpy(pixels[4:36, 4 + 38 : 36 + 38].copy()).permute(2, 0, 1)
    expected = (images[1] * 255).round().to(torch.uint8)  # no datamodule mean / std: shown as they are
    assert (inside.int() - expected.int()).abs().max() <= 1


def test_compression_reconstructions_through_log_image_grid(tmp_path):
    from tests.lightning_modules.compression.test_compression import tiny

    torch.manual_seed(0)
    make_trainer(tmp_path).test(tiny(), one_batch({"image": torch.rand(3, 3, 16, 16)}), verbose=False)
    pixels = read_png(tmp_path / "pictures" / "test_reconstructions_epoch000.png")
    assert pixels.shape == (2 + 2 * 18, 2 + 3 * 18, 3)  # originals over reconstructions, 3 columns


def test_segmentation_draws_image_truth_and_prediction_rows(tmp_path):
    from lightning_modules.segmentation import SegmentationModule, headless_backbone

    torch.manual_seed(0)
    backbone = headless_backbone("resnet18", dict(channels=[8, 16, 32, 64], stem_width=8))
    module = SegmentationModule(backbone, num_classes=3, channels=8, aux_channels=8, slide_crop=None,
                                num_logged=2)  # fmt: skip
    batch = {"image": torch.randn(3, 3, 32, 32), "mask": torch.randint(0, 3, (3, 32, 32))}
    make_trainer(tmp_path).validate(module, one_batch(batch), verbose=False)
    pixels = read_png(tmp_path / "pictures" / "val_predictions_epoch000.png")
    assert pixels.shape == (2 + 2 * 34, 2 + 3 * 34, 3)  # 2 images x (image | ground truth | prediction)
    truth = pixels[2:34, 36:68]
    assert len(np.unique(truth.reshape(-1, 3), axis=0)) == 3  # the three classes in three colours


def test_reid_ranked_lists_go_under_pictures(tmp_path):
    from lightning_modules.reid.module import STTModule
    from lightning_modules.reid.stt import SpatioTemporalTransformer
    from tests.lightning_modules.reid.test_stt_model import TOY

    torch.manual_seed(0)
    n = 6  # tracklets 0-1 are queries, 2-5 the gallery; one clip of 3 frames each
    items = [{"frames": torch.randn(1, 3, 3, 64, 32)} for _ in range(n)]
    batch = {"frames": torch.cat([it["frames"] for it in items]), "clip_owner": torch.arange(n),
             "pid": torch.tensor([0, 1, 0, 1, 0, 1]), "camid": torch.tensor([0, 0, 1, 1, 1, 1]),
             "is_query": torch.tensor([True, True, False, False, False, False]), "index": torch.arange(n)}  # fmt: skip

    class Tracklets(L.LightningDataModule):
        eval_dataset = items

        def test_dataloader(self):
            return one_batch(batch)

    module = STTModule(SpatioTemporalTransformer(num_classes=2, **TOY), figure_queries=2)
    make_trainer(tmp_path).test(module, datamodule=Tracklets(), verbose=False)
    pictures = sorted(p.name for p in (tmp_path / "pictures").iterdir())
    assert pictures == ["test_ranked_lists_epoch000.png"]
    assert read_png(tmp_path / "pictures" / pictures[0]).shape[0] > 2 * 64  # two query rows of 64-pixel frames
    assert not list(tmp_path.rglob("ranked_test.png"))


def test_fewshot_episode_rows_support_blue_queries_green_or_red(tmp_path):
    from lightning_modules.backbones import registered_model
    from lightning_modules.fewshot import FewShotModule

    module = FewShotModule(registered_model("resnet12", num_classes=0, kwargs=dict(channels=(4, 4, 4, 4))))
    module.trainer = make_trainer(tmp_path)
    n, k, q = 2, 1, 2
    batch = {"image": torch.rand(n * k + n * q, 3, 16, 16), "n_way": n, "k_shot": k, "n_query": q}
    out = module.draw_episode(batch, torch.tensor([True, False, False, True]), "val")
    assert out == tmp_path / "pictures" / "val_episode_epoch000.png"
    pixels = read_png(out)
    assert pixels.shape == (2 + n * 22, 2 + (k + q) * 22, 3)  # 16 + 2 * 2 (border) + 2 (padding) per tile
    corners = [[tuple(pixels[2 + 22 * r, 2 + 22 * c]) for c in range(k + q)] for r in range(n)]
    assert corners == [[BLUE_PX, GREEN_PX, RED_PX], [BLUE_PX, RED_PX, GREEN_PX]]


@pytest.mark.parametrize("stage", ["validate", "test"])
def test_no_pictures_without_a_logger(tmp_path, stage):
    from tests.lightning_modules.compression.test_compression import tiny

    trainer = L.Trainer(default_root_dir=tmp_path, accelerator="cpu", logger=False, enable_progress_bar=False,
                        enable_model_summary=False, enable_checkpointing=False)  # fmt: skip
    getattr(trainer, stage)(tiny(), one_batch({"image": torch.rand(2, 3, 16, 16)}), verbose=False)
    assert not (tmp_path / "pictures").exists()


def test_retrieval_rows_of_a_caption_and_its_nearest_images(tmp_path):
    from lightning_modules.retrieval.module import RetrievalEvaluation

    class Ranker(RetrievalEvaluation, SuiteModule):
        ranked_pictures = 2

    module = Ranker()
    module.trainer = make_trainer(tmp_path)
    batch = {"image": torch.rand(3, 3, 16, 16), "image_ids": torch.tensor([10, 11, 12]),
             "text_image_ids": torch.tensor([10, 10, 11, 12])}  # fmt: skip
    # the first caption of image 10 ranks images 10, 11, 12; the first of image 11 ranks 12, 11, 10
    text_emb = torch.tensor([[1.0, 0.5, 0.2], [0.0, 0.0, 1.0], [0.2, 0.5, 1.0], [0.0, 0.0, 1.0]])
    out = module.draw_ranked_images(batch, torch.eye(3), text_emb, "test")
    assert out == tmp_path / "pictures" / "test_ranked_images_epoch000.png"
    pixels = read_png(out)
    assert pixels.shape == (2 + 2 * 22, 2 + 4 * 22, 3)  # 16 + 2 * 2 (border) + 2 (padding) per tile
    corners = [[tuple(pixels[2 + 22 * r, 2 + 22 * c]) for c in range(4)] for r in range(2)]
    assert corners == [[BLUE_PX, GREEN_PX, RED_PX, RED_PX], [BLUE_PX, RED_PX, GREEN_PX, RED_PX]]
