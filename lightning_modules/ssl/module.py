"""BYOL and E-DIY pre-training LightningModules.

* :class:`BYOLModule`: online network (backbone -> global average pool -> projector -> predictor) and an EMA target
  (backbone + projector, no gradient). Each view goes through the networks on its own (batch-norm statistics per
  view, as BYOL). Loss ``byol_loss(p1, z2') + byol_loss(p2, z1')`` (:mod:`lightning_modules.ssl.losses`). After each
  optimizer step the target moves towards the online weights with the cosine momentum ``0.996 -> 1``.
* :class:`EDIYModule`: BYOL plus the region branch (:mod:`lightning_modules.ssl.ediy`) and the two region terms of
  :mod:`lightning_modules.ssl.losses`.

The networks are injected: the config builds the backbone (``registered_model``) and names the heads' classes and
sizes; each head is built here from the width of what feeds it, so no width is written twice.

Batches carry ``views`` ``[B, 2, 3, H, W]`` (``data.init_args.train_transform: byol``); validation batches also carry
the centre-cropped ``image``, on which the "region collapse" of the backbone's last map is logged
(:func:`~lightning_modules.ssl.ediy.region_collapse`). The online backbone is the attribute ``backbone`` so that a
checkpoint's ``backbone.`` weights load into a classifier (:func:`lightning_modules.backbones.load_checkpoint_file`).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Literal

import torch
from torch import Tensor, nn

from lightning_modules.base import SuiteModule
from lightning_modules.ema import ema_update
from lightning_modules.optim import OptimConfig
from lightning_modules.ssl.byol import MLPHead, cosine_momentum
from lightning_modules.ssl.ediy import DenseHead, check_lambdas, region_collapse, regions
from lightning_modules.ssl.losses import diversity_loss, ediy_loss, invariance_loss, symmetrised_byol_loss
from suite_base.errors import ConfigError


def byol_optim() -> OptimConfig:
    """BYOL's optimizer: LARS, lr 0.2 x batch / 256, weight decay 1.5e-6 (none, and no LARS adaptation, on
    batch-norm weights and biases), momentum 0.9, 10 warm-up epochs from 0, then cosine to 0."""
    return OptimConfig(name="lars", base_lr=0.2, base_batch_size=256, weight_decay=1.5e-6, momentum=0.9,
                       no_weight_decay=[], warmup_epochs=10, warmup_lr=0.0, min_lr=0.0)  # fmt: skip


def build_heads(projector: Callable, predictor: Callable, in_dim: int, key: str) -> tuple[nn.Module, nn.Module]:
    """``projector(in_dim)`` and ``predictor(projector.out_dim)``; the predictor must give the projector's width (its
    output is compared with the target's projection). ``key``: the predictor's argument, named in the error."""
    proj = projector(in_dim)
    pred = predictor(proj.out_dim)
    if pred.out_dim != proj.out_dim:
        raise ConfigError(
            f"model.init_args.{key}.init_args.out_dim ({pred.out_dim}) must equal the projector's out_dim "
            f"({proj.out_dim}): the loss compares predictions with target projections"
        )
    return proj, pred


class BYOLModule(SuiteModule):
    """BYOL pre-training (module docstring).

    Args:
        backbone: the online backbone (``lightning_modules.backbones.registered_model``, e.g. ``resnet50`` with
            ``num_classes: 0``); its ``forward_features`` map is pooled for the global branch and its
            ``num_features`` is the projector's input width.
        projector: the projector ``g`` given its input width (``MLPHead`` with ``hidden_dim`` 4096, ``out_dim`` 256;
            in a config its ``class_path`` / ``init_args`` without ``in_dim``).
        predictor: the predictor ``q`` given the projection width (``MLPHead``, 4096 hidden, ``out_dim`` = the
            projector's).
        base_momentum: target EMA momentum at step 0 (0.996), rising to 1 on a cosine over the run's steps.
        log_views: log a grid of the two augmented views (view 1 above view 2) of the first training batch of each
            epoch to TensorBoard; the first epoch's is also saved as ``<run>/pictures/train_views_epoch000.png``.
        optim: optimizer and schedule (default :func:`byol_optim`).
        channels_last: channels-last memory format (faster convolutions on GPUs).
        compile: ``torch.compile`` the online and target backbones' ``forward_features``.

    The target network (``target_backbone``, ``target_projector``) is a momentum copy of the online one made here.
    """

    monitor = "val/loss"
    monitor_mode = "min"

    def __init__(
        self,
        backbone: nn.Module,
        projector: Callable[[int], MLPHead],
        predictor: Callable[[int], MLPHead],
        *,
        base_momentum: float = 0.996,
        log_views: bool = True,
        optim: OptimConfig | None = None,
        channels_last: bool = False,
        compile: bool = False,
    ) -> None:
        super().__init__(optim if optim is not None else byol_optim())
        self.save_hyperparameters_with_networks()
        if not 0 <= base_momentum <= 1:
            raise ConfigError(f"model.init_args.base_momentum must be in [0, 1], got {base_momentum!r}")
        self.backbone = backbone
        self.feature_dim = self.backbone.num_features
        self.projector, self.predictor = build_heads(projector, predictor, self.feature_dim, "predictor")
        self.base_momentum = base_momentum
        self.momentum = base_momentum
        self.log_views = log_views
        self.channels_last = channels_last
        if channels_last:
            self.backbone = self.backbone.to(memory_format=torch.channels_last)
        self.target_backbone = copy.deepcopy(self.backbone).requires_grad_(False)
        self.target_projector = copy.deepcopy(self.projector).requires_grad_(False)
        self.compile = compile
        self._features = torch.compile(self.backbone.forward_features) if compile else self.backbone.forward_features
        self._target_features = (
            torch.compile(self.target_backbone.forward_features) if compile else self.target_backbone.forward_features
        )
        self._total_steps: int | None = None

    # ---- networks --------------------------------------------------------------------------------------------------
    def online_pairs(self) -> list[tuple[nn.Module, nn.Module]]:
        """(target, online) module pairs moved by the EMA."""
        return [(self.target_backbone, self.backbone), (self.target_projector, self.projector)]

    def _prepare(self, images: Tensor) -> Tensor:
        return images.contiguous(memory_format=torch.channels_last) if self.channels_last else images

    def online(self, images: Tensor) -> dict:
        """Online branch of one view: ``fmap`` (backbone's last map), projection ``z`` and prediction ``p``."""
        fmap = self._features(self._prepare(images))
        z = self.projector(fmap.mean(dim=(2, 3)))
        return {"fmap": fmap, "z": z, "p": self.predictor(z)}

    @torch.no_grad()
    def target(self, images: Tensor) -> dict:
        """Target branch of one view (no gradient): ``fmap`` and projection ``z``."""
        fmap = self._target_features(self._prepare(images))
        return {"fmap": fmap, "z": self.target_projector(fmap.mean(dim=(2, 3)))}

    def loss_terms(self, on1: dict, on2: dict, tg1: dict, tg2: dict) -> dict:
        """BYOL's symmetrised loss ``L(p1, z2') + L(p2, z1')``; subclasses add their terms to ``loss``."""
        loss_byol = symmetrised_byol_loss(on1["p"], on2["p"], tg1["z"], tg2["z"])
        return {"loss": loss_byol, "loss_byol": loss_byol}

    @staticmethod
    def split_views(batch: dict) -> tuple[Tensor, Tensor]:
        if "views" in batch:
            views = batch["views"]
            return views[:, 0], views[:, 1]
        return batch["view1"], batch["view2"]

    def shared_step(self, batch: dict) -> dict:
        v1, v2 = self.split_views(batch)
        on1, on2 = self.online(v1), self.online(v2)
        tg1, tg2 = self.target(v1), self.target(v2)
        return self.loss_terms(on1, on2, tg1, tg2)

    def flop_forward(self, batch: dict) -> Tensor:
        return self.shared_step(batch)["loss"]

    # ---- momentum ------------------------------------------------------------------------------------------------
    def total_steps(self) -> int:
        if self._total_steps is None:
            self._total_steps = int(self.trainer.estimated_stepping_batches)
        return self._total_steps

    @torch.no_grad()
    def momentum_update(self, m: float) -> None:
        """``target = m * target + (1 - m) * online`` for every (target, online) pair."""
        for target, online in self.online_pairs():
            ema_update(target, online, m)

    def optimizer_step(self, *args, **kwargs) -> None:
        # the momentum of optimizer step k (k = steps done before this one), applied right after the online update
        self.momentum = cosine_momentum(self.global_step, self.total_steps(), self.base_momentum)
        super().optimizer_step(*args, **kwargs)
        self.momentum_update(self.momentum)

    # ---- Lightning hooks -----------------------------------------------------------------------------------------
    def _log_terms(self, terms: dict, stage: str, batch_size: int) -> None:
        sync = stage != "train"
        for key, value in terms.items():
            if key.startswith("loss"):
                self.log(f"{stage}/{key}", value, prog_bar=key == "loss", sync_dist=sync, batch_size=batch_size)

    def training_step(self, batch: dict, batch_idx: int) -> Tensor:
        terms = self.shared_step(batch)
        v1, v2 = self.split_views(batch)
        B = v1.shape[0]
        self._log_terms(terms, "train", B)
        self.log_dict({"train/momentum": self.momentum, "train/lr": self.trainer.optimizers[0].param_groups[0]["lr"]},
                      batch_size=B)  # fmt: skip
        if batch_idx == 0 and self.log_views and self._trainer is not None:
            self.log_views_grid(v1, v2)
        return terms["loss"]

    def log_views_grid(self, v1: Tensor, v2: Tensor, n: int = 8) -> None:
        """Row 1: view 1 of the first ``n`` images, row 2: their view 2 (a PNG at the first epoch only: the
        augmentations do not change over epochs)."""
        dm = self.trainer.datamodule
        n = min(n, v1.shape[0])
        self.log_image_grid("train/views", torch.cat([v1[:n], v2[:n]]), getattr(dm, "mean", None),
                            getattr(dm, "std", None), nrow=n, save=self.current_epoch == 0)  # fmt: skip

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        B = None
        if "views" in batch or "view1" in batch:
            terms = self.shared_step(batch)
            B = self.split_views(batch)[0].shape[0]
            self._log_terms(terms, "val", B)
        if "image" in batch:
            B = batch["image"].shape[0]
            fmap = self._features(self._prepare(batch["image"]))
            self.log_dict(self.collapse_metrics(fmap), sync_dist=True, batch_size=B)

    def collapse_metrics(self, fmap: Tensor) -> dict:
        """``val/region_collapse``: mean pairwise cosine of the backbone's region features within an image."""
        return {"val/region_collapse": region_collapse(fmap)}

    def test_step(self, batch: dict, batch_idx: int) -> None:
        if "views" in batch or "view1" in batch:
            self._log_terms(self.shared_step(batch), "test", self.split_views(batch)[0].shape[0])


class EDIYModule(BYOLModule):
    """E-DIY pre-training: BYOL plus the region diversity and invariance terms (:mod:`lightning_modules.ssl.losses`).

    Args:
        backbone, projector, predictor: as :class:`BYOLModule`.
        dense_projector: the region projector given the backbone's width (``DenseHead``, a 1x1-conv MLP; 4096
            hidden, ``out_dim`` 256 as the global projection).
        dense_predictor: the region predictor given the region projection width (``DenseHead``, ``out_dim`` = the
            dense projector's).
        lambda_div: weight of the diversity term (>= 0).
        lambda_inv: weight of the invariance term (>= 0).
        div_top_k: most (or least) similar partners averaged per region in the diversity term (1).
        div_partner: ``least_similar`` (default, the abstract's reading: each region is pushed away from the region of
            its view it is least similar to) or ``most_similar`` (ablation: pushed from its nearest neighbours in the
            view); see :mod:`lightning_modules.ssl.ediy`.
        other arguments: :class:`BYOLModule`, by keyword.
    """

    def __init__(
        self,
        backbone: nn.Module,
        projector: Callable[[int], MLPHead],
        predictor: Callable[[int], MLPHead],
        dense_projector: Callable[[int], DenseHead],
        dense_predictor: Callable[[int], DenseHead],
        *,
        lambda_div: float = 1.0,
        lambda_inv: float = 1.0,
        div_top_k: int = 1,
        div_partner: Literal["least_similar", "most_similar"] = "least_similar",
        base_momentum: float = 0.996,
        log_views: bool = True,
        optim: OptimConfig | None = None,
        channels_last: bool = False,
        compile: bool = False,
    ) -> None:
        check_lambdas(lambda_div=lambda_div, lambda_inv=lambda_inv)
        super().__init__(
            backbone,
            projector,
            predictor,
            base_momentum=base_momentum,
            log_views=log_views,
            optim=optim,
            channels_last=channels_last,
            compile=compile,
        )
        self.save_hyperparameters_with_networks()
        if div_partner not in ("least_similar", "most_similar"):
            raise ConfigError(f"model.init_args.div_partner must be least_similar or most_similar, got {div_partner!r}")
        self.lambda_div, self.lambda_inv = float(lambda_div), float(lambda_inv)
        self.div_top_k, self.div_partner = div_top_k, div_partner
        self.dense_projector, self.dense_predictor = build_heads(
            dense_projector, dense_predictor, self.feature_dim, "dense_predictor"
        )
        self.target_dense_projector = copy.deepcopy(self.dense_projector).requires_grad_(False)

    def online_pairs(self) -> list[tuple[nn.Module, nn.Module]]:
        return [*super().online_pairs(), (self.target_dense_projector, self.dense_projector)]

    def online(self, images: Tensor) -> dict:
        out = super().online(images)
        dense_z = self.dense_projector(out["fmap"])
        out["dense_z"] = regions(dense_z)
        out["dense_p"] = regions(self.dense_predictor(dense_z))
        return out

    @torch.no_grad()
    def target(self, images: Tensor) -> dict:
        out = super().target(images)
        out["dense_z"] = regions(self.target_dense_projector(out["fmap"]))
        return out

    def loss_terms(self, on1: dict, on2: dict, tg1: dict, tg2: dict) -> dict:
        terms = super().loss_terms(on1, on2, tg1, tg2)
        k, partner = self.div_top_k, self.div_partner
        loss_div = diversity_loss(on1["dense_z"], k, partner) + diversity_loss(on2["dense_z"], k, partner)
        loss_inv = invariance_loss(on1["dense_p"], tg2["dense_z"]) + invariance_loss(on2["dense_p"], tg1["dense_z"])
        terms.update(loss_div=loss_div, loss_inv=loss_inv)
        terms["loss"] = ediy_loss(
            terms["loss_byol"], loss_div, loss_inv, lambda_div=self.lambda_div, lambda_inv=self.lambda_inv
        )
        return terms

    def collapse_metrics(self, fmap: Tensor) -> dict:
        """Also the region collapse of the online dense projections (what the diversity term acts on)."""
        return {
            **super().collapse_metrics(fmap),
            "val/region_collapse_dense": region_collapse(self.dense_projector(fmap)),
        }
