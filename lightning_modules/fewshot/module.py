"""Few-shot LightningModules sharing one backbone and one episode evaluation loop (COSOC, arXiv 2107.07746).

* :class:`FewShotModule` evaluates on episodes (validation and test): every image is one centre view or ``V``
  random views; ``evaluator: proto`` scores queries by cosine similarity to the class means of the support
  features (views averaged), ``evaluator: soc`` by COSOC's shared object concentrator
  (:mod:`lightning_modules.fewshot.soc`; ``soc_matching: reference`` scores as the released code, whose query
  matching differs from the greedy one the paper describes, ``greedy`` as described). Accuracy and both 95 %
  intervals come from :class:`~lightning_modules.fewshot.metrics.EpisodeAccuracy`.
* :class:`CosineClassifierModule`: supervised training over the base classes with the cosine classifier (scale 10).
  With fusion-sampled crops (``data.train_mode: fusion``), an Exemplar initialisation and ``evaluator: soc`` this is
  COSOC; with plain crops and ``evaluator: proto`` it is the cosine-classifier baseline.
* :class:`ProtoNetModule`: episodic training with prototype logits (Snell et al. 2017, cosine metric, learnable
  scale from 10, as the official ``PN`` config).

Episodes arrive one per batch in the class-major layout of :mod:`datamodules.episodes`.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Literal

import torch
from torch import Tensor, nn

from lightning_modules.base import BLUE, GREEN, RED, SuiteModule, framed, unnormalise
from lightning_modules.fewshot.heads import CosineClassifier, pooled_features, proto_logits
from lightning_modules.fewshot.losses import cosine_classifier_loss, episode_labels, prototype_loss
from lightning_modules.fewshot.metrics import EpisodeAccuracy
from lightning_modules.fewshot.soc import SOC_MATCHINGS, SocMatching, soc_logits
from lightning_modules.optim import OptimConfig
from suite_base.errors import ConfigError


class FewShotModule(SuiteModule):
    """A backbone plus the episode evaluation loop (module docstring). Subclasses call
    ``save_hyperparameters_with_networks()`` at the end of their own ``__init__``.

    Args:
        backbone: the feature extractor, headless (``forward_features`` and ``num_features``; configs build
            ``resnet12`` with ``lightning_modules.backbones.registered_model``, whose ``pretrained`` takes a suite run's
            checkpoint, e.g. the Exemplar stage's, or a hub id).
        evaluator: ``proto`` (cosine prototypes) or ``soc`` (needs ``data.eval_views > 1``; COSOC uses 7).
        soc_alpha: SOC's prototype weight decay (1.0).
        soc_beta: SOC's match weight decay (0.8).
        soc_matching: SOC's query matching: ``reference`` (the released ``SOC.py``, behind the published numbers) or
            ``greedy`` (the paper's description); :mod:`lightning_modules.fewshot.soc` says how they differ.
        test_runs: the test episodes split into this many runs for COSOC's interval (5).
        optim: optimizer and schedule.
        channels_last: channels-last memory format (faster convolutions on GPUs).
        compile: ``torch.compile`` the backbone.
        pictures: draw the first validation and test episode, one row per class: its support images (blue border),
            then up to 5 of its queries (green border: classified right, red: wrong), in TensorBoard and
            ``<run>/pictures/<stage>_episode_epoch<NNN>.png``.
    """

    monitor = "val/acc"
    monitor_mode = "max"

    def __init__(
        self,
        backbone: nn.Module,
        *,
        evaluator: Literal["proto", "soc"] = "proto",
        soc_alpha: float = 1.0,
        soc_beta: float = 0.8,
        soc_matching: SocMatching = "reference",
        test_runs: int = 5,
        optim: OptimConfig | None = None,
        channels_last: bool = False,
        compile: bool = False,
        pictures: bool = True,
    ) -> None:
        super().__init__(optim)
        if evaluator not in ("proto", "soc"):
            raise ConfigError(f"model.evaluator must be proto or soc, got {evaluator!r}")
        if soc_matching not in SOC_MATCHINGS:
            raise ConfigError(f"model.soc_matching must be reference (the released SOC.py) or greedy (the paper's "
                              f"description), got {soc_matching!r}")  # fmt: skip
        self.backbone = backbone
        self.feature_dim = self.backbone.num_features
        self.evaluator, self.soc_alpha, self.soc_beta = evaluator, soc_alpha, soc_beta
        self.soc_matching = soc_matching
        self.pictures = pictures
        self.channels_last = channels_last
        if channels_last:
            self.backbone = self.backbone.to(memory_format=torch.channels_last)
        self.forward_features = torch.compile(self.backbone.forward_features) if compile else None
        self.val_acc = EpisodeAccuracy(runs=1)
        self.test_acc = EpisodeAccuracy(runs=test_runs)

    # -- features -------------------------------------------------------------------------------------------------
    def features(self, images: Tensor) -> Tensor:
        """Pooled, normalised features ``[..., D]`` of images ``[..., 3, H, W]``."""
        lead = images.shape[:-3]
        x = images.flatten(0, -4)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        fmap = (self.forward_features or self.backbone.forward_features)(x)
        return pooled_features(fmap).view(*lead, -1)

    # -- episodes -------------------------------------------------------------------------------------------------
    def episode_logits(self, batch: dict) -> tuple[Tensor, Tensor]:
        """``(logits [Q, N], labels [Q])`` of one episode batch."""
        n, k, q = batch["n_way"], batch["k_shot"], batch["n_query"]
        images = batch["image"]
        if images.ndim == 4:
            images = images[:, None]
        feats = self.features(images)  # [E, V, D]
        support, query = feats[: n * k], feats[n * k :]
        if self.evaluator == "soc":
            logits = soc_logits(support, query, n, k, self.soc_alpha, self.soc_beta, self.soc_matching)
        else:
            logits = proto_logits(support.mean(1), query.mean(1), n, k)
        return logits, episode_labels(n, q, logits.device)

    def _episode_step(self, batch: dict, batch_idx: int, metric: EpisodeAccuracy, stage: str) -> None:
        logits, labels = self.episode_logits(batch)
        episode = torch.tensor([self.global_rank + batch_idx * self.trainer.world_size], device=logits.device)
        correct = logits.argmax(-1) == labels
        metric.update(correct[None], episode)
        if batch_idx == 0 and self.pictures and not self.trainer.sanity_checking:
            self.draw_episode(batch, correct, stage)

    def draw_episode(self, batch: dict, correct: Tensor, stage: str, queries: int = 5) -> Path | None:
        """One row per class of the episode: its support images (blue border) and its first ``queries`` queries
        (green: classified right, red: wrong), first view of each; TensorBoard ``<stage>/episode`` and
        ``<run>/pictures/<stage>_episode_epoch<NNN>.png``."""
        n, k, q = int(batch["n_way"]), int(batch["k_shot"]), int(batch["n_query"])
        images = batch["image"][:, 0] if batch["image"].ndim == 5 else batch["image"]
        dm = getattr(self.trainer, "datamodule", None)
        images = unnormalise(images, getattr(dm, "mean", None), getattr(dm, "std", None))
        shown = min(q, queries)
        support = framed(images[: n * k], [BLUE] * (n * k)).unflatten(0, (n, k))
        query = images[n * k :].unflatten(0, (n, q))[:, :shown].flatten(0, 1)
        right = correct.view(n, q)[:, :shown].flatten().tolist()
        query = framed(query, [GREEN if r else RED for r in right]).unflatten(0, (n, shown))
        return self.log_image_grid(f"{stage}/episode", torch.cat([support, query], 1).flatten(0, 1), nrow=k + shown)

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._episode_step(batch, batch_idx, self.val_acc, "val")

    def on_validation_epoch_end(self) -> None:
        out = self.val_acc.compute()
        self.log_dict({"val/acc": out["acc"], "val/ci95": out["ci95_episodes"]}, prog_bar=True)
        self.val_acc.reset()

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self._episode_step(batch, batch_idx, self.test_acc, "test")

    def on_test_epoch_end(self) -> None:
        out = self.test_acc.compute()
        self.log_dict({f"test/{k}": v for k, v in out.items()})
        if self.trainer.is_global_zero:
            episodes = sum(int(a.numel()) for a in self.test_acc.accuracies) * self.trainer.world_size
            print(f"\nfew-shot test ({self.evaluator}), {episodes} episodes: accuracy {out['acc']:.2f} "
                  f"+- {out['ci95_episodes']:.2f} (95% interval over episodes: 1.96 std / sqrt(episodes))",
                  file=sys.stderr)  # fmt: skip
            if "acc_runs" in out:
                print(f"COSOC protocol, {self.test_acc.runs} runs: mean of run means {out['acc_runs']:.2f} "
                      f"+- {out['ci95_runs']:.2f} (1.96 std of the run means)", file=sys.stderr)  # fmt: skip
        self.test_acc.reset()


class CosineClassifierModule(FewShotModule):
    """Supervised base-class training with the cosine classifier (``CC_head``, scale 10); see the module docstring.

    Args:
        backbone: as :class:`FewShotModule`.
        classifier: the cosine classifier over the base classes (64 for miniImageNet, 351 for tieredImageNet); its
            ``in_features`` must be the backbone's ``num_features``.
        other arguments: :class:`FewShotModule`.
    """

    def __init__(self, backbone: nn.Module, classifier: CosineClassifier, **kwargs) -> None:
        super().__init__(backbone=backbone, **kwargs)
        if classifier.in_features != self.feature_dim:
            raise ConfigError(f"model.init_args.classifier.init_args.in_features is {classifier.in_features} but the "
                              f"backbone has {self.feature_dim} features; set it to {self.feature_dim}")  # fmt: skip
        self.classifier = classifier
        self.save_hyperparameters_with_networks()

    def on_fit_start(self) -> None:
        found = getattr(self.trainer.datamodule, "num_classes", None)
        if found is not None and found != self.classifier.num_classes:
            raise ConfigError(f"model.init_args.classifier.init_args.num_classes is {self.classifier.num_classes} but "
                              f"the training split has {found} classes; set it to {found}")  # fmt: skip

    def training_step(self, batch: dict, batch_idx: int) -> Tensor:
        logits = self.classifier(self.features(batch["image"]))
        loss = cosine_classifier_loss(logits, batch["target"])
        acc = (logits.argmax(-1) == batch["target"]).float().mean()
        self.log_dict({"train/loss": loss, "train/acc": acc}, prog_bar=True)
        return loss


class ProtoNetModule(FewShotModule):
    """Prototypical networks trained on episodes (``data.train_mode: episodes``); cosine logits with a learnable
    scale starting at ``scale`` (official ``PN`` config: cosine, 10, features normalised).

    Args:
        backbone: as :class:`FewShotModule`.
        scale: initial logit scale (10).
        other arguments: :class:`FewShotModule`.
    """

    def __init__(self, backbone: nn.Module, *, scale: float = 10.0, **kwargs) -> None:
        super().__init__(backbone=backbone, **kwargs)
        self.scale = nn.Parameter(torch.tensor(float(scale)))
        self.save_hyperparameters_with_networks()

    def global_batch_size(self) -> int:
        """Episodes per optimizer step (one per device per batch): the unit of ``optim.base_batch_size`` here."""
        return self.trainer.world_size * self.trainer.accumulate_grad_batches

    def training_step(self, batch: dict, batch_idx: int) -> Tensor:
        n, k, q = batch["n_way"], batch["k_shot"], batch["n_query"]
        feats = self.features(batch["image"])
        logits = proto_logits(feats[: n * k], feats[n * k :], n, k, self.scale)
        loss = prototype_loss(logits, q)
        labels = episode_labels(n, q, logits.device)
        self.log_dict({"train/loss": loss, "train/acc": (logits.argmax(-1) == labels).float().mean()}, prog_bar=True)
        return loss
