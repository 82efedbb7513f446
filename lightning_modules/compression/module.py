"""Learning-by-compression (Xie, Zhang, Wei, Chang, Tian 2021, "What Is Considered Complete for Visual
Recognition?", arXiv 2105.13978): represent an image by a compact code from which it can be recovered; labels are
only weak supervision; methods are compared by their compression-recovery trade-off curve.

The paper gives no code or recipe; this is our concrete instantiation (see ../shared/papers, section 4):

* model: encoder (Ballé's stride-2 5x5 conv + GDN analysis transform, or a timm backbone's feature map + 1x1
  projection) -> quantised latent with a fully factorised learned entropy model (Ballé et al. 2018, factorized
  prior; :mod:`lightning_modules.compression.entropy`) -> mirrored decoder; a linear head on the global-average
  pooled quantised latent gives the weak supervision;
* loss (:func:`~lightning_modules.compression.losses.rate_distortion_semantic_loss`):
  ``D(x_hat, x) + lambda_rate * bpp + lambda_sem * CE(head(y_hat), label)`` with ``D`` the MSE (or L1) on images in
  [0, 1] and ``bpp = -sum log2 p(y_hat) / (B * H * W)``. With ``lambda_sem = 0`` the head is still trained, on a
  detached latent (a linear probe whose CE is added to the optimised objective but does not reach the encoder;
  ``val/loss`` leaves it out), so ``val/weak_acc`` always says how much class information the code keeps;
* ``lambda_sem``: the paper makes labels "weak supervision" but gives no weight, so the configs train with one chosen
  by a rule: the CE at chance (``ln K``) weighs about the distortion expected at ``lambda_rate = 0.01``, i.e.
  ``lambda_sem ~ MSE / ln K`` (toy: 0.009 / ln 10 -> 0.004; ImageNet: ~0.002 / ln 1000 -> 3e-4). The labels then
  count as much as the pixels only while the head is at chance and less as it learns; the rate-curve grid also runs
  ``lambda_sem = 0`` to show what they change (docs/compression.md);
* metrics (validation and test, evaluation quantises by rounding): ``bpp`` (ideal code length of the rounded
  latent over all image pixels), ``psnr`` (torchmetrics, ``data_range=1``; one PSNR of the pooled MSE over the
  epoch, not a mean of per-image PSNRs), ``ms_ssim`` (torchmetrics; with fewer scales than the standard five when
  the images are too small for them, see :func:`msssim_betas`), ``weak_acc`` (the head), and the *semantic
  recovery*: top-1 of a frozen classifier (``semantic_classifier``, a checkpoint of a suite
  :class:`~lightning_modules.classification.ImageClassifier` run) on the reconstructions (``sem_acc_recovered``)
  and on the originals (``sem_acc_original``) and their ratio ``semantic_recovery``.

Sweeping ``lambda_rate`` traces the rate-recovery curve, one curve per ``lambda_sem`` (with and without the labels;
``configs/sweeps/compression_lambda_rate.yaml``, ``python -m experiments rate_curve``).

Entropy model: CompressAI 1.2.8 would install, but it forces numpy 1.26 and pulls torch-geometric into the suite's
environment, so the factorised entropy model is written here (~100 lines, tested against analytic densities).
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torch import nn
from torchmetrics import MeanMetric
from torchmetrics.classification import MulticlassAccuracy
from torchmetrics.image import MultiScaleStructuralSimilarityIndexMeasure, PeakSignalNoiseRatio

from lightning_modules.base import SuiteModule
from lightning_modules.compression.losses import rate_distortion_semantic_loss
from lightning_modules.compression.model import CompressionModel
from lightning_modules.optim import OptimConfig
from suite_base.errors import ConfigError

MSSSIM_BETAS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)  # Wang et al. 2003, as torchmetrics' default
MSSSIM_KERNEL = 11


def msssim_betas(size: int, scales: int | None = None) -> tuple[float, ...]:
    """Scale weights of MS-SSIM for ``size`` px images: the first ``n`` of the standard five, renormalised to sum 1,
    with ``n`` the most scales (at most 5) whose coarsest image still holds the 11 px window (``10 * 2**(n-1) <
    size``) and that torchmetrics accepts; ``scales`` forces ``n``. 224 px: all 5; 64 px: 3; 32 px: 2."""
    if scales is None:
        scales = 1
        for n in range(5, 0, -1):
            fits = (MSSSIM_KERNEL - 1) * 2 ** (n - 1) < size and size >= 2**n
            if fits and size // max(1, n - 1) ** 2 > MSSSIM_KERNEL - 1:
                scales = n
                break
    if not 1 <= scales <= 5:
        raise ConfigError(f"msssim_scales must be in 1..5, got {scales}")
    betas = MSSSIM_BETAS[:scales]
    return tuple(b / sum(betas) for b in betas)


def psnr_from_mse(mse: float, data_range: float = 1.0) -> float:
    """``10 log10(range^2 / MSE)``."""
    return 10 * math.log10(data_range**2 / mse)


class CompressionModule(SuiteModule):
    """Learning-by-compression: rate-distortion training with a weak label head and semantic-recovery metrics.

    Args:
        net: the codec, :class:`~lightning_modules.compression.model.CompressionModel` (encoder, entropy bottleneck,
            decoder, weak-label head with ``num_classes``); held as ``model`` (checkpoint keys ``model.*``).
        lambda_rate: weight of the rate ``bpp`` (> 0); larger -> fewer bits, worse recovery.
        lambda_sem: weight of the weak-label cross-entropy (>= 0; 0: the head is a detached probe). The default 0 is
            the label-free codec; the configs use ``MSE / ln K`` at their operating point (module docstring).
        distortion: ``mse`` or ``l1`` on [0, 1] images.
        semantic_classifier: path (or glob, newest match) of a suite ImageClassifier checkpoint used, frozen, to
            measure semantic recovery; None: no semantic metrics.
        semantic_mean: input normalisation of that classifier (the DataModule's mean it was trained with).
        semantic_std: its std.
        msssim_scales: MS-SSIM scales (None: as many as the image size allows, see :func:`msssim_betas`).
        entropy_lr_scale: learning-rate multiple of the entropy model's density parameters (1: one learning rate for
            everything, as Balle et al. train the factorised prior). Short runs need more: the densities start
            10 quantisation bins wide and at the encoder's lr do not sharpen within a few hundred steps, so the rate
            stays near its initial value whatever ``lambda_rate`` is (the toy config uses 10).
        log_images: draw originals over reconstructions of the first validation and test batch (TensorBoard and
            ``<run>/pictures/<stage>_reconstructions_epoch<NNN>.png``).
        optim: optimizer and schedule.
    """

    monitor = "val/loss"
    monitor_mode = "min"

    def __init__(
        self,
        net: CompressionModel,
        *,
        lambda_rate: float = 0.01,
        lambda_sem: float = 0.0,
        distortion: Literal["mse", "l1"] = "mse",
        semantic_classifier: str | None = None,
        semantic_mean: tuple[float, float, float] = IMAGENET_DEFAULT_MEAN,
        semantic_std: tuple[float, float, float] = IMAGENET_DEFAULT_STD,
        msssim_scales: int | None = None,
        entropy_lr_scale: float = 1.0,
        log_images: bool = True,
        optim: OptimConfig | None = None,
    ) -> None:
        super().__init__(optim)
        self.save_hyperparameters_with_networks()
        if not (isinstance(lambda_rate, (int, float)) and math.isfinite(lambda_rate) and lambda_rate > 0):
            raise ConfigError(
                f"model.init_args.lambda_rate must be a finite number > 0 (the weight of the rate term in bits per "
                f"pixel; valid range (0, inf)), got {lambda_rate}"
            )
        if not (isinstance(lambda_sem, (int, float)) and math.isfinite(lambda_sem) and lambda_sem >= 0):
            raise ConfigError(
                f"model.init_args.lambda_sem must be a finite number >= 0 (the weight of the weak-label "
                f"cross-entropy; valid range [0, inf)), got {lambda_sem}"
            )
        lr_scale = entropy_lr_scale
        if not (isinstance(lr_scale, (int, float)) and math.isfinite(lr_scale) and lr_scale > 0):
            raise ConfigError(
                f"model.init_args.entropy_lr_scale must be a finite number > 0 (a learning-rate multiple; valid range "
                f"(0, inf)), got {entropy_lr_scale}"
            )
        if distortion not in ("mse", "l1"):
            raise ConfigError(f"model.init_args.distortion must be 'mse' or 'l1', got {distortion!r}")
        if lambda_sem > 0 and not net.num_classes:
            raise ConfigError(
                "model.init_args.lambda_sem > 0 needs the weak-label head: "
                "set model.init_args.net.init_args.num_classes"
            )
        self.model = net
        self.model.detach_head = lambda_sem == 0  # without the labels' weight the head is a probe
        self.factor = self.model.factor
        self.num_classes = net.num_classes
        self.lambda_rate = float(lambda_rate)
        self.lambda_sem = float(lambda_sem)
        self.distortion = distortion
        self.msssim_scales = msssim_scales
        self.entropy_lr_scale = float(entropy_lr_scale)
        self.log_images = log_images
        self.semantic_mean, self.semantic_std = tuple(semantic_mean), tuple(semantic_std)
        # the DataModule's normalisation, undone to get [0, 1] images (set in setup; identity without a trainer)
        self.data_mean: tuple[float, ...] | None = None
        self.data_std: tuple[float, ...] | None = None
        # frozen judge, kept out of the module tree: neither optimised nor saved in checkpoints
        self.__dict__["_semantic"] = load_semantic_classifier(semantic_classifier) if semantic_classifier else None
        self.metrics = nn.ModuleDict({stage: self._make_metrics() for stage in ("val", "test")})

    def _make_metrics(self) -> nn.ModuleDict:
        metrics = nn.ModuleDict({"bpp": MeanMetric(), "psnr": PeakSignalNoiseRatio(data_range=1.0)})
        if self.num_classes:
            metrics["weak_acc"] = MulticlassAccuracy(self.num_classes, average="micro")
        judge = self.__dict__["_semantic"]
        if judge is not None:
            metrics["sem_acc_recovered"] = MulticlassAccuracy(judge.num_classes, average="micro")
            metrics["sem_acc_original"] = MulticlassAccuracy(judge.num_classes, average="micro")
        return metrics

    def lr_scales(self) -> dict[str, float]:
        """The entropy model's densities learn at ``entropy_lr_scale`` times the scheduled learning rate."""
        return {"model.entropy": self.entropy_lr_scale} if self.entropy_lr_scale != 1.0 else {}

    # ---- the objective ---------------------------------------------------------------------------------------------
    def unit_images(self, images: torch.Tensor) -> torch.Tensor:
        """The batch's images in [0, 1] (the DataModule's mean / std normalisation undone)."""
        if self.data_mean is None or self.data_std is None:
            return images
        mean = torch.tensor(self.data_mean, device=images.device, dtype=images.dtype).view(1, -1, 1, 1)
        std = torch.tensor(self.data_std, device=images.device, dtype=images.dtype).view(1, -1, 1, 1)
        return images * std + mean

    def shared_step(self, batch: dict, noise: bool) -> dict:
        x = self.unit_images(batch["image"])
        out = self.model(x, noise=noise)
        x_hat = out.x_hat.float()
        terms = rate_distortion_semantic_loss(
            x_hat,
            x.float(),
            out.likelihoods,
            lambda_rate=self.lambda_rate,
            lambda_sem=self.lambda_sem,
            distortion=self.distortion,
            logits=out.logits,
            target=batch.get("target"),
        )
        return {"x": x, "x_hat": x_hat, "logits": out.logits, **terms}

    def flop_forward(self, batch: dict) -> torch.Tensor:
        return self.shared_step(batch, noise=True)["objective"]

    # ---- Lightning hooks -------------------------------------------------------------------------------------------
    def setup(self, stage: str) -> None:
        dm = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        if dm is None:
            return
        size = getattr(dm, "img_size", None)
        if isinstance(size, int):
            self.model.check_size(size, size)
        self.data_mean, self.data_std = getattr(dm, "mean", None), getattr(dm, "std", None)
        classes = getattr(dm, "num_classes", None)
        if self.num_classes and isinstance(classes, int) and classes > self.num_classes:
            raise ConfigError(
                f"model.init_args.net.init_args.num_classes={self.num_classes} but the dataset has {classes} classes; "
                f"set --model.init_args.net.init_args.num_classes {classes}"
            )

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        terms = self.shared_step(batch, noise=True)
        B = batch["image"].shape[0]
        self.log("train/loss", terms["loss"], prog_bar=True, batch_size=B)
        self.log("train/bpp", terms["bpp"], prog_bar=True, batch_size=B)
        self.log("train/distortion", terms["distortion"], batch_size=B)
        if "ce" in terms:
            self.log("train/ce", terms["ce"], batch_size=B)
        if self._trainer is not None:
            self.log("train/lr", self.trainer.optimizers[0].param_groups[0]["lr"], batch_size=B)
        return terms["objective"]

    def _evaluate(self, batch: dict, batch_idx: int, stage: str) -> dict:
        terms = self.shared_step(batch, noise=False)
        x, x_hat = terms["x"].float(), terms["x_hat"].clamp(0, 1)
        B, _, H, W = x.shape
        metrics = self.metrics[stage]
        metrics["bpp"].update(terms["bpp"].detach(), weight=B * H * W)
        metrics["psnr"].update(x_hat, x)
        self._msssim(stage, H, W).update(x_hat, x)
        if "weak_acc" in metrics and "target" in batch:
            metrics["weak_acc"].update(terms["logits"], batch["target"])
        judge = self._judge(x.device)
        if judge is not None and "target" in batch:
            with torch.no_grad():
                metrics["sem_acc_recovered"].update(judge(self._judge_input(x_hat)), batch["target"])
                metrics["sem_acc_original"].update(judge(self._judge_input(x)), batch["target"])
        self.log(f"{stage}/loss", terms["loss"], prog_bar=True, sync_dist=True, batch_size=B)
        self.log(f"{stage}/distortion", terms["distortion"], sync_dist=True, batch_size=B)
        return terms

    def _msssim(self, stage: str, height: int, width: int) -> MultiScaleStructuralSimilarityIndexMeasure:
        metrics = self.metrics[stage]
        if "ms_ssim" not in metrics:  # built at the first batch: its scales depend on the image size
            metric = MultiScaleStructuralSimilarityIndexMeasure(
                data_range=1.0, betas=msssim_betas(min(height, width), self.msssim_scales), normalize="relu"
            )
            metrics["ms_ssim"] = metric.to(self.device)
        return metrics["ms_ssim"]

    def _judge(self, device: torch.device) -> nn.Module | None:
        judge = self.__dict__["_semantic"]
        if judge is not None and next(judge.parameters()).device != device:
            judge.to(device)
        return judge

    def _judge_input(self, images: torch.Tensor) -> torch.Tensor:
        mean = torch.tensor(self.semantic_mean, device=images.device).view(1, -1, 1, 1)
        std = torch.tensor(self.semantic_std, device=images.device).view(1, -1, 1, 1)
        return (images - mean) / std

    def _epoch_end(self, stage: str) -> None:
        metrics = self.metrics[stage]
        values = {}
        for name, metric in metrics.items():
            if metric.update_called:
                values[name] = metric.compute()
            metric.reset()
        if "sem_acc_recovered" in values and "sem_acc_original" in values:
            values["semantic_recovery"] = values["sem_acc_recovered"] / values["sem_acc_original"].clamp_min(1e-8)
        for name, value in values.items():
            self.log(f"{stage}/{name}", value, prog_bar=name in ("bpp", "psnr"))

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        terms = self._evaluate(batch, batch_idx, "val")
        if batch_idx == 0 and self.log_images and self._trainer is not None:
            self.log_reconstructions(terms, "val")

    def log_reconstructions(self, terms: dict, stage: str) -> None:
        """Up to 8 originals (top row) over their reconstructions (bottom row): TensorBoard
        ``<stage>/reconstructions`` and ``<run>/pictures/<stage>_reconstructions_epoch<NNN>.png``."""
        n = min(8, terms["x"].shape[0])
        self.log_image_grid(f"{stage}/reconstructions", torch.cat([terms["x"][:n], terms["x_hat"][:n]]), nrow=n)

    def on_validation_epoch_end(self) -> None:
        self._epoch_end("val")

    def test_step(self, batch: dict, batch_idx: int) -> None:
        terms = self._evaluate(batch, batch_idx, "test")
        if batch_idx == 0 and self.log_images and self._trainer is not None:
            self.log_reconstructions(terms, "test")

    def on_test_epoch_end(self) -> None:
        self._epoch_end("test")


def load_semantic_classifier(path: str) -> nn.Module:
    """The frozen classifier network of a suite ImageClassifier checkpoint (a run of e.g. configs/visformer/toy.yaml):
    rebuilt from the ``net`` config its hyper-parameters hold (without re-reading its ``pretrained`` source: the
    checkpoint holds the weights) and loaded with its ``backbone.`` weights; it carries ``num_classes``. ``path`` may be
    a glob (newest match)."""
    from jsonargparse import ArgumentParser

    from lightning_modules.backbones import read_torch_checkpoint

    file, checkpoint = read_torch_checkpoint(path)
    hparams = dict(checkpoint.get("hyper_parameters") or {}) if isinstance(checkpoint, dict) else {}
    net = hparams.get("net")
    weights = {
        k[len("backbone.") :]: v for k, v in (checkpoint.get("state_dict") or {}).items() if k.startswith("backbone.")
    }
    if not (isinstance(net, dict) and "class_path" in net and weights):
        raise ConfigError(
            f"semantic_classifier '{file}' is not a checkpoint of lightning_modules.classification.ImageClassifier "
            "trained by python -m experiments fit (no 'net' config and 'backbone.' weights in it)"
        )
    net = {**net, "init_args": {**(net.get("init_args") or {})}}
    if "pretrained" in net["init_args"]:
        net["init_args"]["pretrained"] = None
    parser = ArgumentParser(exit_on_error=False)
    parser.add_argument("--net", type=nn.Module)
    judge = parser.instantiate(parser.parse_object({"net": net})).net
    judge.load_state_dict(weights)
    if not isinstance(getattr(judge, "num_classes", None), int):
        raise ConfigError(f"semantic_classifier '{file}': its network has no num_classes; it must be a classifier")
    return judge.eval().requires_grad_(False)
