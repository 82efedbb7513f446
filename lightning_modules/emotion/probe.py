"""The frozen-encoder linear probe: TEL baselines built on the same frozen sentence encoder as the DCIN.

Fit (training clips only, clip-level labels): each training clip is the mean of its subtitles' frozen embeddings
``x_n = mean_u e_u`` (``[D]``), standardised with the training mean and deviation; one L2-regularised logistic
regression per class (one-vs-rest, all classes in one full-batch L-BFGS problem in float64):

    min_{W, b}  mean_n sum_c BCE(W_c x_n + b_c, y_nc) + l2 * ||W||^2

The weight ``l2`` is chosen among ``l2_grid`` by clip-level mAP on the clips of ``val_movies`` held-out training
movies (drawn with ``seed`` from the training movies, never the test split); the probe is then refitted on every
training clip with that weight. Scoring a test clip (``scoring``):

* ``per_subtitle``: each subtitle unit gets ``sigmoid(W e_u + b)`` from its own embedding (the clip classifier
  applied to every unit: localization by the sentence encoder alone);
* ``clip_score``: every unit gets the clip's ``sigmoid(W mean_u e_u + b)`` (no localization at all).

Proposals (``proposals``) are the suite's rules (``lightning_modules/emotion/proposals.py``): ``runs`` (relative
thresholds 0.1:0.9, a run scored by its mean probability; the prior's rule) or ``runs+clip`` (the DCIN official
configs' rule: the same runs times the top-k pooled clip probability, plus each clip's whole span scored by it).
Everything is deterministic: the encoder runs in eval mode, L-BFGS starts from zeros and the split is seeded.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Literal, Protocol

import numpy as np
import torch
from torch import Tensor

from lightning_modules.base import SuiteModule
from lightning_modules.emotion.metrics import SegmentMAP
from lightning_modules.emotion.module import LocalizationEvaluation
from lightning_modules.emotion.text import SubtitleEncoder
from suite_base.errors import ConfigError
from suite_base.tel import EMOTIONS

log = logging.getLogger(__name__)


class Clip(Protocol):
    """What the probe reads of a TEL clip (:class:`datamodules.tel_annotations.Clip`): its movie, subtitle texts and
    clip-level labels ``[18]`` bool."""

    movie: str
    texts: list[str]
    labels: np.ndarray


PROPOSAL_RULES = {
    "runs": dict(relative=True, clip_score=False, whole_clip=False),
    "runs+clip": dict(relative=True, clip_score=True, whole_clip=True),
}


def fit_logistic(x: Tensor, y: Tensor, l2: float, steps: int = 200) -> tuple[Tensor, Tensor]:
    """One-vs-rest logistic regressions on ``x [N, D]`` (float) and ``y [N, C]`` (0/1), jointly by full-batch
    L-BFGS in float64 from zeros: ``(weight [C, D], bias [C])`` minimising the mean binary cross-entropy summed over
    classes plus ``l2 * ||weight||^2`` (the bias is not penalised)."""
    with torch.inference_mode(False), torch.enable_grad():  # Lightning's test loop runs in inference mode
        return _lbfgs(x.double().clone(), y.double().clone(), l2, steps)


def _lbfgs(x: Tensor, y: Tensor, l2: float, steps: int) -> tuple[Tensor, Tensor]:
    weight = torch.zeros(y.shape[1], x.shape[1], dtype=torch.float64, requires_grad=True)
    bias = torch.zeros(y.shape[1], dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([weight, bias], lr=1.0, max_iter=steps, tolerance_grad=1e-9, tolerance_change=1e-12,
                            history_size=20, line_search_fn="strong_wolfe")  # fmt: skip

    def closure() -> Tensor:
        opt.zero_grad()
        logits = x @ weight.T + bias
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, y, reduction="sum") / x.shape[0]
        loss = loss + l2 * weight.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return weight.detach(), bias.detach()


def clip_map(scores: Tensor, labels: Tensor) -> float:
    """Clip-level mAP (percent) of ``scores [N, C]`` against ``labels [N, C]``: the suite's :class:`SegmentMAP`
    over clips, mean over the classes with a positive."""
    metric = SegmentMAP(scores.shape[1])
    metric.update(scores.float(), labels.long())
    return float(metric.compute())


def held_out_movies(movies: Sequence[str], count: int, seed: int) -> set[str]:
    """``count`` of the sorted distinct ``movies`` drawn with ``seed`` (the validation movies of the L2 choice)."""
    names = sorted(set(movies))
    if not 0 < count < len(names):
        raise ConfigError(f"model.init_args.val_movies is {count} but the training split has {len(names)} movies; "
                          "hold out at least one and fewer than all")  # fmt: skip
    order = np.random.default_rng(seed).permutation(len(names))
    return {names[i] for i in order[:count]}


def select_and_fit(
    x: Tensor, y: Tensor, movies: Sequence[str], l2_grid: Sequence[float], val_movies: int, seed: int
) -> tuple[Tensor, Tensor, float, dict[float, float]]:
    """Choose the L2 weight on held-out training movies, then refit on all of ``x [N, D]`` / ``y [N, C]``.

    ``movies [N]`` names each row's movie. Returns ``(weight [C, D], bias [C], l2, {l2: held-out clip mAP})``; the
    first grid value wins ties."""
    held = held_out_movies(movies, val_movies, seed)
    val = torch.tensor([m in held for m in movies])
    scores = {}
    for l2 in l2_grid:
        weight, bias = fit_logistic(x[~val], y[~val], l2)
        scores[float(l2)] = clip_map(torch.sigmoid(x[val].double() @ weight.T + bias), y[val])
    best = max(scores, key=lambda k: (scores[k], -list(scores).index(k)))
    weight, bias = fit_logistic(x, y, best)
    return weight, bias, best, scores


def probe_unit_probs(emb: Tensor, mask: Tensor, weight: Tensor, bias: Tensor, scoring: str) -> Tensor:
    """``[B, U, C]`` unit probabilities from subtitle embeddings ``emb [B, U, D]`` (``mask [B, U]`` marks real
    units) and a probe ``weight [C, D]`` / ``bias [C]`` acting on raw embeddings: ``per_subtitle`` scores each unit
    by its own embedding, ``clip_score`` gives every unit the score of the clip's mean embedding (0 on padding)."""
    if scoring == "per_subtitle":
        logits = emb @ weight.T + bias
    elif scoring == "clip_score":
        m = mask.unsqueeze(-1).to(emb.dtype)
        pooled = (emb * m).sum(1) / m.sum(1).clamp(min=1)  # [B, D]
        logits = (pooled @ weight.T + bias).unsqueeze(1).expand(-1, emb.shape[1], -1)
    else:
        raise ConfigError(f"model.init_args.scoring is {scoring!r}; choose per_subtitle or clip_score")
    return torch.sigmoid(logits) * mask.unsqueeze(-1).to(logits.dtype)


class LinearProbe(LocalizationEvaluation, SuiteModule):
    """Frozen-encoder linear probe, fitted on the training clips' labels at the start of ``test`` (``stage: test``
    rows; nothing is trained by ``fit``) and evaluated through the suite's TEL metrics.

    Args:
        text_encoder: the frozen sentence encoder (:class:`SubtitleEncoder`, ``frozen: true``; ``minilm-offline``, as
            the DCIN configs).
        num_classes: emotion classes.
        scoring: ``per_subtitle`` (each unit by its own embedding) or ``clip_score`` (every unit gets the clip's
            score).
        proposals: ``runs`` (relative thresholds, mean probability) or ``runs+clip`` (the DCIN official configs'
            rule: times the top-k pooled clip probability, plus the whole clip).
        l2_grid: candidate L2 weights of the logistic regressions.
        val_movies: training movies held out (drawn with ``seed``) to choose the L2 weight by clip-level mAP.
        seed: the draw of those movies.
        topk_ratio: the clip-level probability (clip mAP, ``runs+clip`` scores) is the mean of the top
            ``ceil(U / topk_ratio)`` unit probabilities, as the DCIN's.
        thresholds: proposal thresholds (relative to each clip's maximum).
        nms_iou: NMS tIoU of the proposals.
        pictures: test clips drawn as timelines.
    """

    monitor = "val/clip_map"
    monitor_mode = "max"

    def __init__(
        self,
        text_encoder: SubtitleEncoder,
        *,
        num_classes: int = 18,
        scoring: Literal["per_subtitle", "clip_score"] = "per_subtitle",
        proposals: Literal["runs", "runs+clip"] = "runs",
        l2_grid: Sequence[float] = (1e-3, 1e-2, 1e-1, 1.0, 10.0),
        val_movies: int = 6,
        seed: int = 0,
        topk_ratio: float = 4.0,
        thresholds: Sequence[float] = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9),
        nms_iou: float = 0.6,
        pictures: int = 2,
    ) -> None:
        super().__init__(None)
        self.save_hyperparameters_with_networks()
        if not text_encoder.frozen:
            raise ConfigError("the probe fits on frozen embeddings: set model.init_args.text_encoder.init_args.frozen "
                              "true")  # fmt: skip
        if scoring not in ("per_subtitle", "clip_score"):
            raise ConfigError(f"model.init_args.scoring is {scoring!r}; choose per_subtitle or clip_score")
        if proposals not in PROPOSAL_RULES:
            raise ConfigError(f"model.init_args.proposals is {proposals!r}; choose one of {', '.join(PROPOSAL_RULES)}")
        if not l2_grid or min(l2_grid) < 0:
            raise ConfigError(f"model.init_args.l2_grid is {list(l2_grid)}; give one or more weights >= 0")
        self.num_classes, self.class_names, self.scoring = num_classes, EMOTIONS[:num_classes], scoring
        self.l2_grid, self.val_movies, self.seed = tuple(float(v) for v in l2_grid), val_movies, seed
        self.subtitle_encoder = text_encoder
        self.cfg = dict(ratio=topk_ratio, thresholds=tuple(thresholds), nms=nms_iou, pictures=pictures,
                        **PROPOSAL_RULES[proposals])  # fmt: skip
        dim = self.subtitle_encoder.dim
        self.register_buffer("weight", torch.full((num_classes, dim), float("nan")))
        self.register_buffer("bias", torch.full((num_classes,), float("nan")))
        self.chosen_l2: float | None = None
        self.l2_scores: dict[float, float] = {}
        self._make_metrics(num_classes)

    # ---- fit -------------------------------------------------------------------------------------------------------
    def clip_embeddings(self, clips: Sequence[Clip]) -> Tensor:
        """``[N, D]`` mean subtitle embedding of each clip (the frozen encoder; zeros for a clip with none)."""
        counts = torch.tensor([len(c.texts) for c in clips])
        emb = self.subtitle_encoder([t for c in clips for t in c.texts], torch.device("cpu"))
        owner = torch.arange(len(clips)).repeat_interleave(counts)
        sums = torch.zeros(len(clips), emb.shape[1], dtype=torch.float64).index_add_(0, owner, emb.double())
        return sums / counts.clamp(min=1).unsqueeze(1)

    def fit_probe(self, clips: Sequence[Clip]) -> None:
        """Fit on training ``clips`` (clip-level labels): choose L2 on held-out movies, refit on all, and store
        the probe on raw embeddings (the standardisation folded into ``weight``/``bias``)."""
        if not clips:
            raise ConfigError("the training split has no clips: check data.init_args.train_json")
        x = self.clip_embeddings(clips)
        y = torch.from_numpy(np.stack([c.labels[: self.num_classes] for c in clips])).double()
        mean, std = x.mean(0), x.std(0).clamp(min=1e-6)
        weight, bias, self.chosen_l2, self.l2_scores = select_and_fit(
            (x - mean) / std, y, [c.movie for c in clips], self.l2_grid, self.val_movies, self.seed
        )
        log.info("linear probe: held-out clip mAP per L2 %s; chosen %g", self.l2_scores, self.chosen_l2)
        self.weight.copy_((weight / std).float())
        self.bias.copy_((bias - (weight / std) @ mean).float())

    def on_test_start(self) -> None:
        if torch.isnan(self.weight).any():
            self.fit_probe(self.trainer.datamodule.clips("train"))

    on_validation_start = on_test_start

    # ---- scoring ---------------------------------------------------------------------------------------------------
    def unit_probs(self, batch: dict) -> Tensor:
        """``[B, U, C]`` per-unit probabilities (``scoring``)."""
        mask = batch["unit_mask"]
        emb = self.subtitle_encoder([t for texts in batch["texts"] for t in texts], mask.device)
        feats = emb.new_zeros(*mask.shape, emb.shape[-1])
        feats[mask] = emb
        return probe_unit_probs(feats, mask, self.weight, self.bias, self.scoring)

    def on_test_epoch_end(self) -> None:
        super().on_test_epoch_end()
        if self.chosen_l2 is not None:  # the L2 choice and its held-out clip-level mAP (training movies)
            self.log_dict({"test/probe_l2": self.chosen_l2, "test/probe_val_clip_map": self.l2_scores[self.chosen_l2]})
