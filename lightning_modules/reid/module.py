"""The STT LightningModule (video person re-ID, arXiv 2103.16469): training with the STT objective, evaluation by
query-gallery retrieval (CMC, mAP, mINP; optional k-reciprocal re-ranking) and a ranked-list picture.

Batches come from :class:`datamodules.tracklets.TrackletDataModule`: training clips ``frames [B, T, 3, H, W]``
with identity labels (P identities x K tracklets per batch, for the triplet terms); evaluation items are
tracklets cut into one or more clips (``frames [sum C, T, 3, H, W]``, ``clip_owner [sum C]``), whose clip
embeddings are averaged into one tracklet feature.

Pre-training on synthesized video and fine-tuning (the paper's pipeline) are two runs of this module:
``init_from`` loads a previous STT run's weights, every tensor except the identity classifiers (whose size is the
number of training identities of each dataset).
"""

from __future__ import annotations

import logging

import torch
from torch import Tensor

from lightning_modules.backbones import read_torch_checkpoint
from lightning_modules.base import SuiteModule
from lightning_modules.optim import OptimConfig
from lightning_modules.reid.figures import ranked_list_figure, ranked_lists_grid
from lightning_modules.reid.losses import stt_loss
from lightning_modules.reid.metrics import ReIDMetrics
from lightning_modules.reid.stt import SpatioTemporalTransformer
from suite_base.errors import ConfigError

log = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class STTModule(SuiteModule):
    """STT training and evaluation.

    Args:
        net: the model (:class:`SpatioTemporalTransformer`); its ``num_classes`` must be the training split's
            identities (625 on MARS, 702 on DukeMTMC-VideoReID, 842 on LS-VID's train split).
        init_from: an STT run's checkpoint (e.g. synthetic pre-training) to start from; classifiers are new.
        label_smoothing: of every identity cross-entropy (0.1, the re-ID convention).
        triplet_margin: of both batch-hard triplet terms (0.3).
        spatial_weight / temporal_weight / attention_weight: weights of the perception constraints
            (:func:`lightning_modules.reid.losses.stt_loss`); 0 removes a term.
        distance: retrieval distance, ``euclidean`` or ``cosine`` (on L2-normalised BNNeck features).
        rerank: k-reciprocal re-ranking at test time (Zhong et al. 2017; k1 20, k2 6, lambda 0.3).
        figure_queries: queries drawn with their top-5 gallery tracklets after each evaluation (0: none).
        optim: optimizer and schedule.
        channels_last: channels-last memory format for the CNN (faster on GPUs).
        compile: ``torch.compile`` the model.
    """

    monitor = "val/mAP"
    monitor_mode = "max"

    def __init__(
        self,
        net: SpatioTemporalTransformer,
        *,
        init_from: str | None = None,
        label_smoothing: float = 0.1,
        triplet_margin: float = 0.3,
        spatial_weight: float = 1.0,
        temporal_weight: float = 1.0,
        attention_weight: float = 0.1,
        distance: str = "euclidean",
        rerank: bool = False,
        figure_queries: int = 4,
        optim: OptimConfig | None = None,
        channels_last: bool = False,
        compile: bool = False,
    ) -> None:
        super().__init__(optim)
        self.save_hyperparameters_with_networks()
        for name, value in (("spatial_weight", spatial_weight), ("temporal_weight", temporal_weight),
                            ("attention_weight", attention_weight), ("label_smoothing", label_smoothing),
                            ("triplet_margin", triplet_margin)):  # fmt: skip
            if value < 0:
                raise ConfigError(f"model.init_args.{name} must be >= 0, got {value}")
        if distance not in ("euclidean", "cosine"):
            raise ConfigError(f"model.init_args.distance must be 'euclidean' or 'cosine', got '{distance}'")
        self.model = net  # the attribute name keeps the checkpoints' "model." keys
        if init_from:
            load_stt_weights(self.model, init_from)
        if channels_last:
            self.model.cnn = self.model.cnn.to(memory_format=torch.channels_last)
            self.model.channels_last = True
        self.__dict__["_compiled"] = torch.compile(self.model) if compile else None
        self.val_metric = ReIDMetrics(distance=distance)
        self.test_metric = ReIDMetrics(distance=distance, rerank=rerank)
        self.figure_queries = figure_queries

    def on_fit_start(self) -> None:
        expected = getattr(self.trainer.datamodule, "num_classes", None)
        if expected is not None and expected != self.model.num_classes:
            raise ConfigError(
                f"model.init_args.net.init_args.num_classes is {self.model.num_classes} but the training split has "
                f"{expected} identities; set --model.init_args.net.init_args.num_classes {expected}"
            )

    def run_model(self, frames: Tensor) -> dict[str, Tensor]:
        model = self.__dict__["_compiled"] or self.model
        return model(frames)

    def training_step(self, batch: dict, batch_idx: int) -> Tensor:
        out = self.run_model(batch["frames"])
        hp = self.hparams
        terms = stt_loss(out, batch["pid"], smoothing=hp.label_smoothing, margin=hp.triplet_margin,
                         spatial_weight=hp.spatial_weight, temporal_weight=hp.temporal_weight,
                         attention_weight=hp.attention_weight)  # fmt: skip
        accuracy = (out["logits"].argmax(1) == batch["pid"]).float().mean()
        self.log_dict({f"train/{k}": v.detach() for k, v in terms.items() if k != "loss"})
        self.log("train/loss", terms["loss"].detach(), prog_bar=True)
        self.log("train/id_acc", accuracy, prog_bar=True)
        return terms["loss"]

    def tracklet_embeddings(self, batch: dict) -> Tensor:
        """Clip embeddings averaged per tracklet: ``[B, F]`` for the ``B`` tracklets of an evaluation batch."""
        clips = self.run_model(batch["frames"])["embedding"].float()
        owner = batch["clip_owner"]
        sums = torch.zeros(len(batch["pid"]), clips.shape[1], device=clips.device).index_add_(0, owner, clips)
        counts = torch.bincount(owner, minlength=len(batch["pid"])).clamp_min(1)
        return sums / counts[:, None]

    def _eval_step(self, batch: dict, metric: ReIDMetrics) -> None:
        metric.update(self.tracklet_embeddings(batch), batch["pid"], batch["camid"], batch["is_query"],
                      batch["index"])  # fmt: skip

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._eval_step(batch, self.val_metric)

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self._eval_step(batch, self.test_metric)

    def _eval_epoch_end(self, stage: str, metric: ReIDMetrics) -> None:
        values = metric.compute()
        self.log_dict({f"{stage}/{k}": v for k, v in values.items()}, sync_dist=False)
        if self.trainer.is_global_zero and not self.trainer.sanity_checking:
            summary = ", ".join(f"{k} {float(v):.2f}" for k, v in values.items())
            print(f"re-ID {stage} ({metric.distance}{', re-ranked' if metric.rerank else ''}): {summary}")
            self.draw_ranked_lists(stage, metric)
        metric.reset()

    def on_validation_epoch_end(self) -> None:
        self._eval_epoch_end("val", self.val_metric)

    def on_test_epoch_end(self) -> None:
        self._eval_epoch_end("test", self.test_metric)

    def draw_ranked_lists(self, stage: str, metric: ReIDMetrics, top: int = 5) -> None:
        """Draw the first ``figure_queries`` queries and their top-``top`` gallery tracklets (green: right identity,
        red: wrong; same-identity same-camera entries are left out as in the evaluation), log the picture to
        TensorBoard and save it as ``<run>/pictures/<stage>_ranked_lists_epoch<NNN>.png``."""
        datamodule = getattr(self.trainer, "datamodule", None)
        dataset = getattr(datamodule, "eval_dataset", None)
        if not self.figure_queries or dataset is None:
            return
        ranked = metric.ranked_gallery(self.figure_queries, top)
        mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
        std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)

        def clip(index: int) -> Tensor:
            return (dataset[index]["frames"][0] * std + mean).clamp(0, 1)

        rows = [
            ranked_list_figure(clip(q), torch.stack([clip(g) for g in gallery]), correct)
            for q, gallery, correct in ranked
        ]
        if not rows:
            return
        grid = ranked_lists_grid(rows)
        self.log_image_grid(f"{stage}/ranked_lists", grid[None], nrow=1)


def load_stt_weights(model: SpatioTemporalTransformer, path: str) -> None:
    """Load an STT run's ``model.`` weights into ``model``, except tensors whose shapes differ (the identity
    classifiers of another dataset); any other missing or unexpected key is an error naming the keys."""
    file, state = read_torch_checkpoint(path)
    weights = {k[len("model.") :]: v for k, v in state.get("state_dict", {}).items() if k.startswith("model.")}
    if not weights:
        raise ConfigError(f"init_from {file}: no 'model.' weights; give a checkpoint of an STT run")
    target = model.state_dict()
    reshaped = [k for k, v in weights.items() if k in target and target[k].shape != v.shape]
    new_heads = [k for k in reshaped if k.endswith("classifier.weight")]
    weights = {k: v for k, v in weights.items() if k not in new_heads}
    other = [k for k in reshaped if k not in new_heads]
    missing, unexpected = model.load_state_dict({k: v for k, v in weights.items() if k not in other}, strict=False)
    missing = [k for k in missing if k not in new_heads and k not in other]
    if missing or unexpected or other:
        raise ConfigError(
            f"init_from {file}: the checkpoint does not match this model (other shapes {other[:5]}, missing "
            f"{missing[:5]}, unexpected {unexpected[:5]}); use the same backbone, sizes, img_size and seq_len as the "
            "pre-training run"
        )
    log.info("init_from %s: loaded %d tensors, new classifiers: %s", file, len(weights), new_heads)
