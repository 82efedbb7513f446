"""Semantic segmentation fine-tuning (ADE20K, mmseg's UPerNet recipe) of any suite backbone.

* Model: backbone -> :class:`~lightning_modules.segmentation.upernet.MultiScaleFeatures` (plain ViTs: + BEiT's
  :class:`~lightning_modules.segmentation.upernet.ViTMultiLevelNeck`) -> ``UPerHead`` (logits at
  stride 4, upsampled bilinearly to the input) plus an optional auxiliary ``FCNHead`` on the stride-16 level
  (mmseg: weight 0.4; training only).
* Loss: cross-entropy with ``ignore_index`` (255: ADE20K's "other" and padding) on the upsampled logits, plus
  ``aux_weight`` times the auxiliary head's (:func:`~lightning_modules.segmentation.losses.upernet_loss`).
* Validation / test: sliding-window inference (mmseg's ``mode='slide'``) or whole-image inference, logits resized
  to the mask's size, then torchmetrics ``MulticlassJaccardIndex(average="macro", ignore_index)`` as ``val/mIoU``
  (classes absent from both prediction and ground truth are left out of the mean, as mmseg's nan-mean) and the
  pixel accuracy over labelled pixels as ``val/aAcc``. The first validation batch is drawn as image / ground truth /
  prediction rows in a colour palette (``val/predictions`` in TensorBoard).
* Optimisation: :class:`~lightning_modules.optim.OptimConfig`; ``layer_decay`` decays the backbone's learning rate
  by its ``group_matcher`` layers (BEiT / mmseg's ``LayerDecayOptimizerConstructor``), the heads (and iTPN's
  pyramid, which HiViT's matcher puts in its last group) at the full rate.
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torch import nn
from torchmetrics import MetricCollection
from torchmetrics.classification import MulticlassAccuracy, MulticlassJaccardIndex

from lightning_modules.backbones import load_checkpoint_file
from lightning_modules.base import SuiteModule
from lightning_modules.optim import OptimConfig, nested_layer_matcher
from lightning_modules.segmentation.inference import sliding_window_inference
from lightning_modules.segmentation.losses import upernet_loss
from lightning_modules.segmentation.upernet import (
    FCNHead,
    MultiScaleFeatures,
    UPerHead,
    ViTMultiLevelNeck,
    backbone_name,
    resize,
)
from suite_base.errors import ConfigError

IGNORE_INDEX = 255


def load_starting_weights(backbone: nn.Module, pretrained: str, key: str = "model.init_args.pretrained") -> None:
    """Load a local checkpoint (a glob loads its newest match) into ``backbone``: a suite run's Lightning checkpoint
    (its ``encoder.`` / ``backbone.`` weights) or official weights mapped by the family's filter. Anything else (a
    hub id) is refused with the fix: hub weights load where the backbone is built (``registered_model``)."""
    if not os.path.exists(pretrained) and not any(ch in pretrained for ch in "*?["):
        raise ConfigError(
            f"{key} '{pretrained}' is no local file or glob; give a checkpoint path (for hub weights build the "
            "backbone with them: model.init_args.backbone.class_path lightning_modules.backbones.registered_model, "
            f"init_args {{name: ..., num_classes: 0, pretrained: <hub id>}}, and {key} null)"
        )
    load_checkpoint_file(backbone, pretrained)


def palette(num_classes: int, seed: int = 0) -> torch.Tensor:
    """``[num_classes + 1, 3]`` uint8 colours: a fixed random colour per class; the last row (ignored pixels) black."""
    g = torch.Generator().manual_seed(seed)
    colours = torch.randint(40, 256, (num_classes, 3), generator=g, dtype=torch.int64)
    return torch.cat([colours, torch.zeros(1, 3, dtype=torch.int64)]).to(torch.uint8)


def colorize(mask: torch.Tensor, colours: torch.Tensor, ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """``[B, H, W]`` class indices -> ``[B, 3, H, W]`` float images in 0..1 (ignored / out-of-range pixels black)."""
    index = mask.long().clone().cpu()
    index[(index == ignore_index) | (index < 0) | (index >= len(colours) - 1)] = len(colours) - 1
    return colours[index].permute(0, 3, 1, 2).float() / 255


class SegmentationModule(SuiteModule):
    """UPerNet semantic segmentation over any suite backbone.

    Args:
        backbone: the injected headless backbone
            (:func:`~lightning_modules.segmentation.upernet.headless_backbone`: a timm registry model, ours included,
            ``itpn_base_3324_patch16_224`` ...; timm's ``resnet50`` ...).
        pretrained: checkpoint of any suite run (a Lightning ``.ckpt`` whose ``encoder.`` / ``backbone.`` weights
            load; a glob picks the newest) or official weights (mapped by the family's filter), loaded into the
            backbone by :func:`load_starting_weights`; None: the backbone as built.
        num_classes: predicted classes (150 for ADE20K; the toy's count for the toy).
        channels: UPerHead width (mmseg UPerNet 512; iTPN's official ADE20K configs 768).
        pool_scales: PPM scales.
        dropout: dropout before the classifiers.
        aux_weight: weight of the auxiliary FCN head's loss on the stride-16 level (mmseg 0.4; 0 disables it).
        aux_channels: auxiliary head width (mmseg 256).
        ignore_index: mask value that is neither trained on nor scored.
        slide_crop: ``(height, width)`` windows of sliding-window evaluation (mmseg 512x512); None: whole image.
        slide_stride: window stride (mmseg 341x341).
        num_logged: images drawn (image / ground truth / prediction) from the first validation and test batch into
            ``<run>/pictures/<stage>_predictions_epoch<NNN>.png`` and TensorBoard (0 disables it).
        vit_out_indices: for a plain ViT (BEiT / MVP): the 4 blocks whose outputs BEiT's neck
            (:class:`~lightning_modules.segmentation.upernet.ViTMultiLevelNeck`) turns into strides 4-32
            ([3, 5, 7, 11] for ViT-B); None for hierarchical backbones.
        optim: optimizer and schedule; ``layer_decay`` applies to the backbone's layers.
    """

    monitor = "val/mIoU"
    monitor_mode = "max"

    def __init__(
        self,
        backbone: nn.Module,
        *,
        pretrained: str | None = None,
        num_classes: int = 150,
        channels: int = 512,
        pool_scales: tuple[int, ...] = (1, 2, 3, 6),
        dropout: float = 0.1,
        aux_weight: float = 0.4,
        aux_channels: int = 256,
        ignore_index: int = IGNORE_INDEX,
        slide_crop: tuple[int, int] | None = (512, 512),
        slide_stride: tuple[int, int] = (341, 341),
        num_logged: int = 4,
        vit_out_indices: list[int] | None = None,
        optim: OptimConfig | None = None,
    ) -> None:
        super().__init__(optim)
        self.save_hyperparameters_with_networks()
        if pretrained:
            load_starting_weights(backbone, pretrained)
        self.backbone = backbone
        self.features = MultiScaleFeatures(backbone, backbone_name(backbone), vit_out_indices=vit_out_indices)
        self.neck = ViTMultiLevelNeck(self.features.out_channels[0]) if self.features.kind == "vit" else None
        self.num_classes, self.ignore_index = num_classes, ignore_index
        self.decode_head = UPerHead(self.features.out_channels, channels, num_classes, tuple(pool_scales), dropout)
        self.aux_weight = aux_weight
        self.aux_index = None
        self.auxiliary_head = None
        if aux_weight > 0:
            strides = self.features.strides
            # mmseg: in_index=2, the stride-16 level; the level closest to it otherwise
            self.aux_index = min(range(len(strides)), key=lambda i: (abs(strides[i] - 16), -strides[i]))
            self.auxiliary_head = FCNHead(self.features.out_channels[self.aux_index], aux_channels, num_classes,
                                          dropout)  # fmt: skip
        self.slide_crop = tuple(slide_crop) if slide_crop is not None else None
        self.slide_stride = tuple(slide_stride)
        self.num_logged = num_logged
        self.colours = palette(num_classes)
        metrics = MetricCollection(
            {
                "mIoU": MulticlassJaccardIndex(num_classes, ignore_index=ignore_index, average="macro"),
                "aAcc": MulticlassAccuracy(num_classes, ignore_index=ignore_index, average="micro"),
            }
        )
        self.val_metrics = metrics.clone(prefix="val/")
        self.test_metrics = metrics.clone(prefix="test/")

    # ---- model -------------------------------------------------------------------------------------------------
    def forward_heads(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(logits, aux_logits)`` at the heads' own resolutions (stride 4 and the aux level's); aux None in eval."""
        feats = self.features(images)
        if self.neck is not None:
            feats = self.neck(feats)
        logits = self.decode_head(feats)
        aux = None
        if self.auxiliary_head is not None and self.training:
            aux = self.auxiliary_head(feats[self.aux_index])
        return logits, aux

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """``[B, 3, H, W]`` -> ``[B, num_classes, H, W]`` logits (bilinearly upsampled from stride 4)."""
        return resize(self.forward_heads(images)[0], images.shape[-2:])

    @torch.no_grad()
    def predict_logits(self, images: torch.Tensor, size: tuple[int, int] | None = None) -> torch.Tensor:
        """Evaluation logits: sliding-window (``slide_crop``) or whole-image inference, resized to ``size``."""
        if self.slide_crop is not None:
            logits = sliding_window_inference(self, images, self.num_classes, self.slide_crop, self.slide_stride)
        else:
            logits = self(images)
        return resize(logits.float(), size) if size is not None else logits

    # ---- optimisation ------------------------------------------------------------------------------------------
    def no_weight_decay(self) -> set[str]:
        names = getattr(self.backbone, "no_weight_decay", lambda: set())()
        return {f"backbone.{n}" for n in names}

    def group_matcher(self, coarse: bool = False):
        """Layer ids for layer-wise lr decay: the backbone's own ``group_matcher`` layers under ``backbone.``, every
        other parameter (heads) at the top, i.e. at the full learning rate.

        iTPN: HiViT's matcher puts the pyramid (and norms) in its last group, above the last block; mmseg's
        LayerDecayOptimizerConstructor (iTPN's seg configs, num_layers 30 for B) trains those with the heads at the
        full rate, the last block at decay ** 1 and the patch embedding at decay ** (num_layers + 1)."""
        what = f"backbone {self.features.name}"
        return nested_layer_matcher(self.backbone, "backbone.", self.features.kind != "itpn", what)

    # ---- steps -------------------------------------------------------------------------------------------------
    def setup(self, stage: str) -> None:
        dm = getattr(self._trainer, "datamodule", None) if self._trainer is not None else None
        data_classes = getattr(dm, "num_classes", None)
        if data_classes is not None and data_classes != self.num_classes:
            raise ConfigError(
                f"model.num_classes={self.num_classes} but the data has {data_classes} classes; "
                f"set --model.init_args.num_classes {data_classes}"
            )

    def loss(self, images: torch.Tensor, masks: torch.Tensor) -> dict[str, torch.Tensor]:
        logits, aux = self.forward_heads(images)
        return upernet_loss(logits, aux, masks, aux_weight=self.aux_weight, ignore_index=self.ignore_index)

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        images, masks = batch["image"], batch["mask"]
        losses = self.loss(images, masks)
        size = images.shape[0]
        self.log("train/loss", losses["loss"], prog_bar=True, batch_size=size)
        self.log("train/loss_decode", losses["decode"], batch_size=size)
        if "aux" in losses:
            self.log("train/loss_aux", losses["aux"], batch_size=size)
        self.log("train/lr", self.trainer.optimizers[0].param_groups[-1]["lr"], batch_size=size)
        if "skipped" in batch:
            self.log("data/skipped", batch["skipped"].float(), reduce_fx="sum", on_step=False, on_epoch=True,
                     batch_size=1)  # fmt: skip
        return losses["loss"]

    def _evaluate(self, batch: dict, metrics: MetricCollection, stage: str, batch_idx: int) -> None:
        images, masks = batch["image"], batch["mask"]
        logits = self.predict_logits(images, masks.shape[-2:])
        loss = F.cross_entropy(logits, masks, ignore_index=self.ignore_index)
        preds = logits.argmax(1)
        metrics.update(preds, masks)
        self.log(f"{stage}/loss", loss, sync_dist=True, batch_size=images.shape[0])
        self.log_dict(metrics, prog_bar=True, batch_size=images.shape[0])
        if batch_idx == 0 and self.num_logged > 0 and self._trainer is not None:
            self.log_predictions(images, masks, preds, stage)

    def log_predictions(self, images: torch.Tensor, masks: torch.Tensor, preds: torch.Tensor,
                        stage: str = "val") -> None:  # fmt: skip
        """One grid (TensorBoard ``<stage>/predictions`` and ``<run>/pictures/<stage>_predictions_epoch<NNN>.png``):
        per image a row of image / ground truth / prediction, all at the mask's size."""
        n = min(self.num_logged, images.shape[0])
        transform = getattr(getattr(self.trainer, "datamodule", None), "eval_transform", None)
        mean = (transform.mean.flatten() / 255).tolist() if transform is not None else IMAGENET_DEFAULT_MEAN
        std = (transform.std.flatten() / 255).tolist() if transform is not None else IMAGENET_DEFAULT_STD
        shown = images[:n].detach().float().cpu() * torch.tensor(std).view(1, 3, 1, 1)
        shown = resize(shown + torch.tensor(mean).view(1, 3, 1, 1), masks.shape[-2:]).clamp(0, 1)
        rows = torch.stack([shown, colorize(masks[:n], self.colours, self.ignore_index),
                            colorize(preds[:n], self.colours, self.ignore_index)], dim=1)  # fmt: skip
        self.log_image_grid(f"{stage}/predictions", rows.flatten(0, 1), nrow=3)

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._evaluate(batch, self.val_metrics, "val", batch_idx)

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self._evaluate(batch, self.test_metrics, "test", batch_idx)

    def predict_step(self, batch: dict, batch_idx: int) -> dict:
        size = batch["mask"].shape[-2:] if "mask" in batch else None
        return {"pred": self.predict_logits(batch["image"], size).argmax(1), "name": batch.get("name")}
