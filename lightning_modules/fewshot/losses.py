"""The few-shot training losses as pure functions: the modules compute their networks' outputs and call these.

COSOC's paper text could not be read here (docs/cosoc.md), so each formula is the one its official code computes
(``Frankluox/LightningFSL``, file named per function), cited with the equation of the paper that introduced it.
Episodes are class-major (:mod:`datamodules.episodes`): query ``i`` belongs to class ``i // n_query``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def episode_labels(n_way: int, n_query: int, device: torch.device | str | None = None) -> Tensor:
    """``[N * Q]`` class indices of an episode's queries in the class-major layout: ``0, 0, ..., 1, 1, ...``."""
    return torch.arange(n_way, device=device).repeat_interleave(n_query)


def cosine_classifier_loss(logits: Tensor, targets: Tensor) -> Tensor:
    """Cross-entropy of the cosine classifier over the base classes (official ``CC_head``; COSOC's stage 2 and the
    cosine-classifier baseline, Chen et al. 2019's Baseline++): ``L = -log softmax_c(s cos(f, w_c))[y]`` with
    ``logits [B, C]`` the scaled cosines of :class:`~lightning_modules.fewshot.heads.CosineClassifier`."""
    return F.cross_entropy(logits, targets)


def prototype_loss(logits: Tensor, n_query: int) -> Tensor:
    """ProtoNet's episode loss (Snell et al. 2017, Eq. 2: ``-log softmax_k(-d(f(x), c_k))[y]`` with ``c_k`` the
    class means of Eq. 1), with the official ``PN_head``'s cosine metric: ``logits [N * Q, N]`` are
    ``s cos(q, c_k)`` (:func:`~lightning_modules.fewshot.heads.proto_logits`), queries class-major."""
    return F.cross_entropy(logits, episode_labels(logits.shape[1], n_query, logits.device))


def exemplar_logits(query: Tensor, key: Tensor, queue: Tensor, queue_labels: Tensor, labels: Tensor,
                    temperature: float, same_class_penalty: float | None) -> Tensor:  # fmt: skip
    """``[B, 1 + K]`` InfoNCE logits, the positive first: ``(q.k, q.Q_1 - p [y_1 = y], ...) / T`` for normalised
    ``query``, ``key [B, D]`` and the queue ``[K, D]`` of keys with ``queue_labels [K]``.

    MoCo's Eq. 1 (He et al. 2020) with Exemplar-v2's change (Zhao et al. 2021; official ``modules/moco.py``,
    ``is_Exampler=True``): ``p = same_class_penalty`` (300) is subtracted from every queued key of the query's own
    class, so that same-class images are no negatives; ``None`` gives plain MoCo-v2."""
    positive = (query * key).sum(1, keepdim=True)
    negative = query @ queue.clone().T.to(query.dtype)  # a copy: the queue changes before backward
    if same_class_penalty is not None:
        negative = negative - same_class_penalty * (labels[:, None] == queue_labels[None]).to(query.dtype)
    return torch.cat([positive, negative], 1) / temperature


def exemplar_loss(logits: Tensor) -> Tensor:
    """InfoNCE (MoCo, He et al. 2020, Eq. 1): ``-log softmax(logits)[0]`` averaged over the batch, the positive
    key in column 0 of :func:`exemplar_logits`."""
    return F.cross_entropy(logits, torch.zeros(logits.shape[0], dtype=torch.long, device=logits.device))
