"""Image classification: supervised training (DeiT recipe), fine-tuning and linear probing of any timm backbone.

Loss: cross-entropy with label smoothing; with mixup/cutmix (timm's ``Mixup``, Zhang et al. 2018 / Yun et al.
2019) the targets are soft and the loss is the soft-target cross-entropy ``-sum_c y_c log softmax(z)_c``.
Metrics: top-1 / top-5 accuracy (torchmetrics). Optional exponential moving average of the weights (timm
``ModelEmaV3``), evaluated beside the raw weights as ``val/top1_ema``.

Mixup lives here, not in the DataModule: it needs the loss's label smoothing and number of classes, and it is a
per-batch operation that runs on the device after transfer.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from timm.data import Mixup
from timm.loss import SoftTargetCrossEntropy
from timm.utils import ModelEmaV3
from torch import nn
from torchmetrics import MetricCollection
from torchmetrics.classification import MulticlassAccuracy

from lightning_modules.base import GREEN, RED, SuiteModule, framed, unnormalise
from lightning_modules.optim import OptimConfig
from suite_base.errors import ConfigError


class ImageClassifier(SuiteModule):
    """Classify images with an injected timm classifier (its weights under ``backbone.*``).

    Args:
        net: the classifier, a timm model (it carries ``num_classes`` and ``get_classifier()``); configs build it
            with :func:`~lightning_modules.backbones.registered_model` (name, pretrained, num_classes, drop_rate,
            drop_path_rate, kwargs).
        label_smoothing: label smoothing epsilon (also used inside mixup's soft targets).
        mixup_alpha: mixup Beta(alpha, alpha); 0 disables.
        cutmix_alpha: cutmix Beta(alpha, alpha); 0 disables.
        mixup_prob: probability of applying mixup or cutmix to a batch.
        mixup_switch_prob: probability of cutmix instead of mixup when both are on.
        ema_decay: weight EMA decay per step (None disables).
        linear_probe: freeze everything but the classifier (backbone kept in eval mode).
        probe_batchnorm: with ``linear_probe``, put a BatchNorm without affine in front of the classifier (MAE's
            linear-probing protocol, He et al. 2022 Appendix A.2: pre-trained features have very different scales).
        optim: optimizer and schedule (see :class:`~lightning_modules.optim.OptimConfig`).
        channels_last: use the channels-last memory format (faster convolutions on GPU).
        compile: wrap the backbone in ``torch.compile``.
        pictures: images of the first validation and test batch drawn with a green border where the top-1
            prediction is right and a red one where it is wrong, in TensorBoard and
            ``<run>/pictures/<stage>_predictions_epoch<NNN>.png`` (0: none).
    """

    monitor = "val/top1"
    monitor_mode = "max"

    def __init__(
        self,
        net: nn.Module,
        *,
        label_smoothing: float = 0.1,
        mixup_alpha: float = 0.8,
        cutmix_alpha: float = 1.0,
        mixup_prob: float = 1.0,
        mixup_switch_prob: float = 0.5,
        ema_decay: float | None = None,
        linear_probe: bool = False,
        probe_batchnorm: bool = True,
        optim: OptimConfig | None = None,
        channels_last: bool = False,
        compile: bool = False,
        pictures: int = 16,
    ) -> None:
        super().__init__(optim)
        self.save_hyperparameters_with_networks()
        num_classes = getattr(net, "num_classes", None)
        if not isinstance(num_classes, int) or num_classes < 1:
            raise ConfigError(
                f"model.init_args.net: {type(net).__name__} has no num_classes (got {num_classes!r}); inject a "
                "classifier, e.g. lightning_modules.backbones.registered_model with num_classes set"
            )
        self.backbone = net
        self.pictures = pictures
        self.channels_last = channels_last
        if channels_last:
            self.backbone = self.backbone.to(memory_format=torch.channels_last)
        self.mixup = None
        if mixup_alpha > 0 or cutmix_alpha > 0:
            self.mixup = Mixup(
                mixup_alpha=mixup_alpha,
                cutmix_alpha=cutmix_alpha,
                prob=mixup_prob,
                switch_prob=mixup_switch_prob,
                label_smoothing=label_smoothing,
                num_classes=num_classes,
            )
        self.soft_loss = SoftTargetCrossEntropy()
        self.label_smoothing = label_smoothing
        self.linear_probe = linear_probe
        if linear_probe:
            head = self.backbone.get_classifier()
            if probe_batchnorm and isinstance(head, nn.Linear):
                head = nn.Sequential(nn.BatchNorm1d(head.in_features, affine=False, eps=1e-6), head)
                self._set_classifier(head)
            head_params = {id(p) for p in head.parameters()}
            for p in self.backbone.parameters():
                p.requires_grad_(id(p) in head_params)
        self.ema = None
        if ema_decay is not None:
            self.ema = ModelEmaV3(self.backbone, decay=ema_decay)
            self.ema.requires_grad_(False)
        # kept out of the module tree so the state_dict holds the weights once
        self.__dict__["_compiled_backbone"] = torch.compile(self.backbone) if compile else None

        top_k = {"top1": MulticlassAccuracy(num_classes, top_k=1, average="micro")}
        if num_classes > 5:
            top_k["top5"] = MulticlassAccuracy(num_classes, top_k=5, average="micro")
        metrics = MetricCollection(top_k)
        self.val_metrics = metrics.clone(prefix="val/")
        self.test_metrics = metrics.clone(prefix="test/")
        self.val_ema_metrics = metrics.clone(prefix="val/", postfix="_ema") if self.ema is not None else None

    @property
    def num_classes(self) -> int:
        """Output classes, the injected network's own ``num_classes``."""
        return self.backbone.num_classes

    def _set_classifier(self, head: nn.Module) -> None:
        name = getattr(self.backbone, "pretrained_cfg", {}).get("classifier", "head")
        parent = self.backbone
        *path, leaf = name.split(".")
        for part in path:
            parent = getattr(parent, part)
        setattr(parent, leaf, head)

    def optimizer_root(self) -> nn.Module:
        return self.backbone

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """``[B, 3, H, W]`` images -> ``[B, num_classes]`` logits."""
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        compiled = self.__dict__["_compiled_backbone"]
        return compiled(images) if compiled is not None else self.backbone(images)

    def setup(self, stage: str) -> None:
        data_classes = getattr(self.trainer.datamodule, "num_classes", None)
        if data_classes is not None and data_classes > self.num_classes:
            raise ConfigError(
                f"model.init_args.net.init_args.num_classes={self.num_classes} but the dataset has {data_classes} "
                f"classes; set --model.init_args.net.init_args.num_classes {data_classes}"
            )

    def on_train_epoch_start(self) -> None:
        if self.linear_probe:
            self.backbone.eval()  # frozen statistics: a linear probe trains the classifier only
            self.backbone.get_classifier().train()  # (its BatchNorm, if any, normalises the frozen features)

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        images, targets = batch["image"], batch["target"]
        if self.mixup is not None and images.shape[0] % 2:
            raise ValueError("mixup needs an even batch size; set data.drop_last: true or an even batch_size")
        if batch_idx == 0 and self.current_epoch == 0 and self._trainer is not None:
            dm = self.trainer.datamodule  # log what the network is fed, after augmentation
            self.log_image_grid("train/inputs", images[:32], getattr(dm, "mean", None), getattr(dm, "std", None))
        if self.mixup is not None:
            images, soft_targets = self.mixup(images, targets)
            loss = self.soft_loss(self(images), soft_targets)
        else:
            loss = F.cross_entropy(self(images), targets, label_smoothing=self.label_smoothing)
        self.log("train/loss", loss, prog_bar=True, batch_size=images.shape[0])
        self.log("train/lr", self.trainer.optimizers[0].param_groups[-1]["lr"], batch_size=images.shape[0])
        if "skipped" in batch:
            self.log(
                "data/skipped", batch["skipped"].float(), reduce_fx="sum", on_step=False, on_epoch=True, batch_size=1
            )
        return loss

    def on_train_batch_end(self, outputs, batch, batch_idx: int) -> None:
        if self.ema is not None:
            self.ema.update(self.backbone, step=self.global_step)

    def _evaluate(self, batch: dict, metrics: MetricCollection, stage: str, batch_idx: int) -> None:
        logits = self(batch["image"])
        loss = F.cross_entropy(logits, batch["target"])
        metrics.update(logits, batch["target"])
        batch_size = batch["target"].shape[0]
        self.log(f"{stage}/loss", loss, sync_dist=True, batch_size=batch_size)
        self.log_dict(metrics, prog_bar=True, batch_size=batch_size)
        if batch_idx == 0 and self.pictures > 0 and self._trainer is not None and not self.trainer.sanity_checking:
            self.draw_predictions(batch["image"], logits, batch["target"], stage)

    def draw_predictions(
        self, images: torch.Tensor, logits: torch.Tensor, targets: torch.Tensor, stage: str
    ) -> Path | None:
        """The first ``pictures`` images framed green (top-1 right) or red (wrong): TensorBoard
        ``<stage>/predictions`` and ``<run>/pictures/<stage>_predictions_epoch<NNN>.png``."""
        n = min(self.pictures, images.shape[0])
        dm = getattr(self.trainer, "datamodule", None)
        shown = unnormalise(images[:n], getattr(dm, "mean", None), getattr(dm, "std", None))
        right = (logits[:n].argmax(-1) == targets[:n]).tolist()
        return self.log_image_grid(f"{stage}/predictions", framed(shown, [GREEN if r else RED for r in right]))

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._evaluate(batch, self.val_metrics, "val", batch_idx)
        if self.ema is not None:
            self.val_ema_metrics.update(self.ema.module(batch["image"]), batch["target"])
            self.log_dict(self.val_ema_metrics, batch_size=batch["target"].shape[0])

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self._evaluate(batch, self.test_metrics, "test", batch_idx)

    def predict_step(self, batch: dict, batch_idx: int) -> dict:
        probs = self(batch["image"]).softmax(-1)
        return {"probs": probs, "pred": probs.argmax(-1)}
