"""Exemplar pre-training for COSOC: MoCo-v2 with same-class negatives suppressed (official ``modules/moco.py`` with
``is_Exampler=True``; Zhao et al., "What makes instance discrimination good for transfer learning?", ICLR 2021).

Query and key encoders are the backbone and an EMA copy (momentum 0.999), each followed by an MLP
640 -> 640 -> ReLU -> 128 on the pooled, normalised features. With ``q`` and ``k`` the normalised embeddings of two
views and the queue ``Q`` (65,536 keys), the loss is InfoNCE at temperature 0.07 (MoCo, He et al. 2020, Eq. 1):

    L = -log exp(q.k / T) / (exp(q.k / T) + sum_j exp((q.Q_j - 300 [y_j = y]) / T))

where the ``-300`` removes every queued key of the query's own class from the negatives (Exemplar-v2). Batch
norm sees the keys in a shuffled order, in two halves per device, as the official single-GPU path does (the
"shuffling BN" of MoCo, so that a batch's statistics cannot leak which key matches which query).
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_modules.ema import ema_update
from lightning_modules.fewshot.losses import exemplar_logits, exemplar_loss
from lightning_modules.fewshot.module import FewShotModule
from suite_base.errors import ConfigError


class ExemplarMoCo(FewShotModule):
    """Exemplar / MoCo-v2 pre-training of a few-shot backbone (module docstring); validation uses the shared
    episode loop (cosine prototypes).

    Args:
        backbone: the online (query) encoder's backbone; the key encoder is a copy of it.
        queue_size: negatives kept (65,536).
        momentum: key-encoder EMA momentum (0.999).
        temperature: InfoNCE temperature (0.07).
        proj_dim: embedding size of the MLP head (128).
        suppress_same_class: Exemplar-v2 (True) or plain MoCo-v2 (False).
        same_class_penalty: added (negated) to the logits of same-class queued keys (300).
        other arguments: :class:`~lightning_modules.fewshot.module.FewShotModule` (episode pictures always on).
    """

    def __init__(self, backbone: nn.Module, *, queue_size: int = 65536, momentum: float = 0.999,
                 temperature: float = 0.07, proj_dim: int = 128, suppress_same_class: bool = True,
                 same_class_penalty: float = 300.0, **kwargs) -> None:  # fmt: skip
        super().__init__(backbone=backbone, pictures=True, **kwargs)
        if not 0 <= momentum < 1 or temperature <= 0 or queue_size < 1:
            raise ConfigError(f"need 0 <= momentum < 1, temperature > 0 and queue_size >= 1 "
                              f"(got {momentum}, {temperature}, {queue_size})")  # fmt: skip
        d = self.feature_dim
        self.projector = nn.Sequential(nn.Linear(d, d), nn.ReLU(), nn.Linear(d, proj_dim))
        self.key_backbone = copy.deepcopy(self.backbone).requires_grad_(False)
        self.key_projector = copy.deepcopy(self.projector).requires_grad_(False)
        self.momentum, self.temperature = momentum, temperature
        self.suppress_same_class, self.same_class_penalty = suppress_same_class, same_class_penalty
        self.register_buffer("queue", F.normalize(torch.randn(queue_size, proj_dim), dim=1))
        self.register_buffer("queue_labels", torch.full((queue_size,), -1, dtype=torch.long))
        self.register_buffer("queue_ptr", torch.zeros((), dtype=torch.long))
        self.save_hyperparameters_with_networks()

    def embed(self, backbone: nn.Module, projector: nn.Module, images: Tensor) -> Tensor:
        """Normalised embeddings, computed in two halves (batch-norm statistics per half, as the official code)."""
        out = []
        for part in images.chunk(2) if images.shape[0] > 1 else (images,):
            x = part.contiguous(memory_format=torch.channels_last) if self.channels_last else part
            fmap = backbone.forward_features(x)
            pooled = F.adaptive_avg_pool2d(F.normalize(fmap, dim=1), 1).flatten(1)
            out.append(F.normalize(projector(pooled), dim=1))
        return torch.cat(out)

    @torch.no_grad()
    def momentum_update(self) -> None:
        """``key = m * key + (1 - m) * online`` for every parameter; buffers (BN statistics) are the key's own."""
        ema_update(self.key_backbone, self.backbone, self.momentum)
        ema_update(self.key_projector, self.projector, self.momentum)

    @torch.no_grad()
    def enqueue(self, keys: Tensor, labels: Tensor) -> None:
        """Write the keys of every rank at the queue pointer (wrapping around), oldest first out."""
        trainer = self._trainer
        if trainer is not None and trainer.world_size > 1:
            keys, labels = self.all_gather(keys).flatten(0, 1), self.all_gather(labels).flatten()
        slots = (self.queue_ptr + torch.arange(keys.shape[0], device=keys.device)) % self.queue.shape[0]
        self.queue[slots] = keys.to(self.queue.dtype)
        self.queue_labels[slots] = labels
        self.queue_ptr.copy_((self.queue_ptr + keys.shape[0]) % self.queue.shape[0])

    def contrastive_logits(self, q: Tensor, k: Tensor, labels: Tensor) -> Tensor:
        """``[B, 1 + queue]`` logits (positive first), same-class negatives suppressed, divided by T
        (:func:`~lightning_modules.fewshot.losses.exemplar_logits` with this module's queue and settings)."""
        penalty = self.same_class_penalty if self.suppress_same_class else None
        return exemplar_logits(q, k, self.queue, self.queue_labels, labels, self.temperature, penalty)

    def training_step(self, batch: dict, batch_idx: int) -> Tensor:
        q = self.embed(self.backbone, self.projector, batch["image"])
        with torch.no_grad():
            self.momentum_update()
            order = torch.randperm(q.shape[0], device=q.device)
            k = torch.empty_like(q)
            k[order] = self.embed(self.key_backbone, self.key_projector, batch["image_k"][order])
        logits = self.contrastive_logits(q, k, batch["target"])
        loss = exemplar_loss(logits)
        self.enqueue(k, batch["target"])
        self.log_dict({"train/loss": loss, "train/acc": (logits.argmax(1) == 0).float().mean()}, prog_bar=True)
        return loss
