"""DAMSM (AttnGAN, Xu et al., CVPR 2018): the text and image encoders DE-Net's recipe conditions on and scores with,
their matching losses, and the pre-training step (``python -m experiments fit --config configs/denet/*_damsm.yaml``).

* **Text encoder** (``bilstm``, AttnGAN's ``RNN_ENCODER``): word embedding (300-d, dropout 0.5), one bidirectional
  LSTM layer with 128 units per direction: word features ``e [B, L, 256]`` and the sentence feature ``ebar [B, 256]``
  (the two final hidden states). Or a transformers model (``text: minilm-offline`` or a hub id / folder): frozen,
  its token states and mean-pooled sentence projected to 256-d by trained linear layers.
* **Image encoder** (``CNN_ENCODER``): a timm backbone (AttnGAN: Inception-v3 at 299 px) read at two depths: the
  stride-16 map (Mixed_6e, 17x17) through a 1x1 conv gives region features ``v [B, R, 256]``; the last map pooled
  through a linear layer gives the global feature ``vbar [B, 256]``.
* **Losses** (AttnGAN Eqs. 7-13), for a batch of ``B`` matching pairs: word-region attention ``alpha = softmax_r(
  gamma1 * softmax_l(v_r . e_l))``, region context ``c_l = sum_r alpha_lr v_r``, relevance ``R(Q, D) = log(sum_l
  exp(gamma2 cos(c_l, e_l)))^(1/gamma2)``, and the posterior over the batch with ``gamma3``: ``L_w = -sum_i log
  P(D_i|Q_i) - sum_i log P(Q_i|D_i)``; the sentence loss ``L_s`` replaces ``R`` by ``cos(vbar, ebar)``. Pairs of the
  same class (CUB) are not negatives (masked, as AttnGAN masks them). All pairs of the batch are scored at once.

Defaults follow AttnGAN's DAMSM configs [recall, unverified here]: gamma1 = 4, gamma2 = 5, gamma3 = 10, Adam lr 2e-3
with betas (0.5, 0.999), the RNN's gradient norm clipped to 0.25.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from experiments.errors import ConfigError
from lightning_modules.base import SuiteModule
from lightning_modules.optim import OptimConfig


class BiLSTMTextEncoder(nn.Module):
    """AttnGAN's ``RNN_ENCODER``: ``(tokens [B, L], lengths [B]) -> (words [B, L, 2h], sentence [B, 2h])``."""

    def __init__(self, vocab_size: int, embed_dim: int = 300, hidden: int = 128, dropout: float = 0.5) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab_size, embed_dim)
        nn.init.uniform_(self.embed.weight, -0.1, 0.1)
        self.drop = nn.Dropout(dropout)
        self.rnn = nn.LSTM(embed_dim, hidden, num_layers=1, batch_first=True, bidirectional=True)
        self.dim, self.vocab_size = 2 * hidden, vocab_size

    def forward(self, tokens: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        if int(tokens.max()) >= self.vocab_size:
            raise ConfigError(f"a token index {int(tokens.max())} exceeds the text encoder's vocabulary "
                              f"({self.vocab_size} words): the DAMSM checkpoint was trained on another vocabulary "
                              "(captions_DAMSM.pickle)")  # fmt: skip
        x = self.drop(self.embed(tokens))
        packed = pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False)
        out, (h, _) = self.rnn(packed)
        words, _ = pad_packed_sequence(out, batch_first=True, total_length=tokens.shape[1])
        return words, torch.cat([h[0], h[1]], dim=-1)


class TransformerTextEncoder(nn.Module):
    """A frozen transformers encoder with trained projections to the joint space (raw captions in)."""

    def __init__(self, name_or_path: str, dim: int = 256, max_length: int = 32) -> None:
        super().__init__()
        from lightning_modules.retrieval.text import CaptionTokenizer, load_text_encoder

        self.encoder, tokenizer = load_text_encoder(name_or_path)
        self.encoder.requires_grad_(False).eval()
        self.tokenize = CaptionTokenizer(tokenizer, max_length)
        width = self.encoder.config.hidden_size
        self.word_proj, self.sent_proj = nn.Linear(width, dim), nn.Linear(width, dim)
        self.dim = dim

    def train(self, mode: bool = True):
        super().train(mode)
        self.encoder.eval()
        return self

    def forward(self, captions: list[str]) -> tuple[Tensor, Tensor, Tensor]:
        device = self.word_proj.weight.device
        enc, _ = self.tokenize(captions, device)
        ids, mask = enc["input_ids"], enc["attention_mask"]
        with torch.no_grad():
            states = self.encoder(input_ids=ids, attention_mask=mask).last_hidden_state
        m = mask.unsqueeze(-1).to(states.dtype)
        sentence = (states * m).sum(1) / m.sum(1).clamp(min=1)
        return self.word_proj(states), self.sent_proj(sentence), mask.bool()


class TextEncoder(nn.Module):
    """``batch, prefix -> (words [B, L, D], sentence [B, D], mask [B, L])`` for the captions ``<prefix>captions``."""

    def __init__(self, kind: str = "bilstm", vocab_size: int | None = None, dim: int = 256) -> None:
        super().__init__()
        self.kind = kind
        if kind == "bilstm":
            if not vocab_size:
                raise ConfigError("the BiLSTM text encoder needs model.init_args.vocab_size: the number of words of "
                                  "captions_DAMSM.pickle (max index + 1)")  # fmt: skip
            if dim % 2:
                raise ConfigError(f"the BiLSTM's joint dimension must be even (two directions), got {dim}")
            self.net = BiLSTMTextEncoder(vocab_size, hidden=dim // 2)
        else:
            self.net = TransformerTextEncoder(kind, dim)
        self.dim = dim

    def forward(self, batch: dict, prefix: str = "") -> tuple[Tensor, Tensor, Tensor]:
        if self.kind == "bilstm":
            tokens, lengths = batch[f"{prefix}tokens"], batch[f"{prefix}lengths"]
            words, sentence = self.net(tokens, lengths)
            mask = torch.arange(tokens.shape[1], device=tokens.device)[None] < lengths.to(tokens.device)[:, None]
            return words, sentence, mask
        return self.net(batch[f"{prefix}captions"])


class ImageEncoder(nn.Module):
    """AttnGAN's ``CNN_ENCODER`` on a timm backbone: ``images [-1, 1] -> (regions [B, R, D], global [B, D])``."""

    def __init__(self, backbone: str = "inception_v3", dim: int = 256, input_size: int = 299,
                 pretrained: str | bool = False, train_backbone: bool = False) -> None:  # fmt: skip
        super().__init__()
        from lightning_modules.backbones import create_timm_pretrained

        self.backbone = create_timm_pretrained(backbone, pretrained, features_only=True)
        reductions = self.backbone.feature_info.reduction()
        if 16 not in reductions:
            raise ConfigError(f"{backbone} has no stride-16 feature map for DAMSM's regions (reductions "
                              f"{reductions}); choose a CNN backbone")  # fmt: skip
        self.local_index = reductions.index(16)
        channels = self.backbone.feature_info.channels()
        self.local = nn.Conv2d(channels[self.local_index], dim, 1, bias=False)
        self.glob = nn.Linear(channels[-1], dim)
        for layer in (self.local, self.glob):
            nn.init.uniform_(layer.weight, -0.1, 0.1)  # AttnGAN's init of the two embedding layers
        cfg = self.backbone.pretrained_cfg
        self.register_buffer("mean", torch.tensor(cfg.get("mean", (0.5, 0.5, 0.5))).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(cfg.get("std", (0.5, 0.5, 0.5))).view(1, 3, 1, 1))
        self.input_size, self.train_backbone = input_size, train_backbone
        if not train_backbone:
            self.backbone.requires_grad_(False)

    def train(self, mode: bool = True):
        super().train(mode)
        if not self.train_backbone:
            self.backbone.eval()
        return self

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor]:
        x = (images.float() + 1) / 2
        if x.shape[-1] != self.input_size:
            x = F.interpolate(x, size=(self.input_size, self.input_size), mode="bilinear", align_corners=False)
        maps = self.backbone((x - self.mean) / self.std)
        regions = self.local(maps[self.local_index]).flatten(2).transpose(1, 2)
        return regions, self.glob(maps[-1].mean(dim=(2, 3)))


def _posterior_loss(scores: Tensor, class_ids: Tensor | None) -> Tensor:
    """Cross-entropy of ``scores [B_img, B_txt]`` both ways with the diagonal as targets; same-class pairs masked."""
    if class_ids is not None:
        same = (class_ids[:, None] == class_ids[None, :]) & (class_ids[:, None] >= 0)
        same.fill_diagonal_(False)
        scores = scores.masked_fill(same, float("-inf"))
    target = torch.arange(scores.shape[0], device=scores.device)
    return F.cross_entropy(scores, target) + F.cross_entropy(scores.t(), target)


def word_relevance(regions: Tensor, words: Tensor, mask: Tensor, gamma1: float, gamma2: float) -> Tensor:
    """``R(Q_i, D_j)`` for every image ``i`` and caption ``j``: ``[B_img, B_txt]`` (AttnGAN Eqs. 8-10)."""
    logits = torch.einsum("ird,jld->ijrl", regions, words)  # region-word dot products
    word_mask = mask[None, :, None, :]
    attn = logits.masked_fill(~word_mask, float("-inf")).softmax(-1)  # normalised over words
    attn = (gamma1 * attn).masked_fill(~word_mask, float("-inf")).softmax(2)  # then over regions, per word
    context = torch.einsum("ijrl,ird->ijld", attn.nan_to_num(0.0), regions)
    cos = F.cosine_similarity(context, words[None].expand_as(context), dim=-1)  # [B_img, B_txt, L]
    summed = (torch.exp(gamma2 * cos) * mask[None].to(cos.dtype)).sum(-1)
    return torch.log(summed) / gamma2


def damsm_losses(regions: Tensor, image_global: Tensor, words: Tensor, sentence: Tensor, mask: Tensor,
                 class_ids: Tensor | None = None, gamma1: float = 4.0, gamma2: float = 5.0,
                 gamma3: float = 10.0) -> dict[str, Tensor]:  # fmt: skip
    """``{"word", "sentence"}``: AttnGAN's DAMSM word and sentence losses over a batch of matching pairs."""
    word = _posterior_loss(gamma3 * word_relevance(regions, words, mask, gamma1, gamma2), class_ids)
    sim = F.normalize(image_global, dim=-1) @ F.normalize(sentence, dim=-1).t()
    return {"word": word, "sentence": _posterior_loss(gamma3 * sim, class_ids)}


def check_vocabulary(text_encoder: TextEncoder, trainer, fix: str) -> None:
    """The BiLSTM's vocabulary must be the data's (``captions_DAMSM.pickle``); ``fix`` tells the user what to set."""
    dm = getattr(trainer, "datamodule", None) if trainer is not None else None
    if text_encoder.kind != "bilstm" or dm is None or not hasattr(dm, "vocab_size"):
        return
    if dm.vocab_size != text_encoder.net.vocab_size:
        raise ConfigError(
            f"the data's vocabulary ({dm.root}/captions_DAMSM.pickle) has {dm.vocab_size} entries but "
            f"the BiLSTM text encoder has {text_encoder.net.vocab_size}: {fix.format(n=dm.vocab_size)}"
        )


class DAMSM(SuiteModule):
    """Pre-trains the DAMSM text and image encoders on matching (image, caption) pairs.

    Args:
        text: ``bilstm`` (AttnGAN's) or a transformers id / folder (``minilm-offline``: the offline MiniLM).
        vocab_size: words of ``captions_DAMSM.pickle`` (BiLSTM; CUB 5,450, COCO 27,297 in AttnGAN's metadata).
        dim: joint space width (256).
        image_backbone: timm CNN (``inception_v3`` as AttnGAN).
        image_input_size: images are resized to this side before the backbone (299 for Inception-v3).
        pretrained_backbone: ``True`` (timm's cache), a local weights file, or ``False``.
        train_backbone: train the backbone too (AttnGAN keeps Inception-v3 frozen; the toy trains a small one).
        gamma1, gamma2, gamma3: attention sharpness, word-relevance and posterior smoothing factors.
        optim: optimiser and schedule (AttnGAN: Adam 2e-3, betas 0.5/0.999).
    """

    monitor = "val/loss"
    monitor_mode = "min"

    def __init__(
        self,
        text: str = "bilstm",
        vocab_size: int | None = None,
        dim: int = 256,
        image_backbone: str = "inception_v3",
        image_input_size: int = 299,
        pretrained_backbone: str | bool = False,
        train_backbone: bool = False,
        gamma1: float = 4.0,
        gamma2: float = 5.0,
        gamma3: float = 10.0,
        optim: OptimConfig | None = None,
    ) -> None:
        super().__init__(optim)
        self.save_hyperparameters()
        self.text_encoder = TextEncoder(text, vocab_size, dim)
        self.image_encoder = ImageEncoder(image_backbone, dim, image_input_size, pretrained_backbone, train_backbone)
        self.gammas = (gamma1, gamma2, gamma3)

    def setup(self, stage: str) -> None:
        check_vocabulary(self.text_encoder, self._trainer, "set model.init_args.vocab_size: {n}")

    def losses(self, batch: dict) -> dict[str, Tensor]:
        words, sentence, mask = self.text_encoder(batch)
        regions, image_global = self.image_encoder(batch["image"])
        out = damsm_losses(regions, image_global, words, sentence, mask, batch.get("class_ids"), *self.gammas)
        out["loss"] = out["word"] + out["sentence"]
        return out

    def training_step(self, batch: dict, batch_idx: int) -> Tensor:
        out = self.losses(batch)
        B = batch["image"].shape[0]
        self.log("train/loss", out["loss"], prog_bar=True, batch_size=B)
        self.log_dict({"train/word": out["word"], "train/sentence": out["sentence"]}, batch_size=B)
        return out["loss"]

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        out = self.losses(batch)
        B = batch["image"].shape[0]
        self.log_dict({f"val/{k}": v for k, v in out.items()}, batch_size=B, sync_dist=True)
        regions, image_global = self.image_encoder(batch["image"])
        _, sentence, _ = self.text_encoder(batch)
        sim = F.normalize(image_global, dim=-1) @ F.normalize(sentence, dim=-1).t()
        hits = (sim.argmax(1) == torch.arange(B, device=sim.device)).float().mean()
        self.log("val/r1_in_batch", 100 * hits, batch_size=B, sync_dist=True)
        self.log("val/chance_r1", 100 / B, batch_size=B)

    def on_before_optimizer_step(self, optimizer) -> None:
        if self.text_encoder.kind == "bilstm":  # AttnGAN clips the RNN's gradients to norm 0.25
            torch.nn.utils.clip_grad_norm_(self.text_encoder.parameters(), 0.25)


def load_damsm(checkpoint: str, map_location="cpu") -> DAMSM:
    """A frozen DAMSM from a pre-training checkpoint (``<run>/checkpoints/best.ckpt``)."""
    import os

    if not os.path.isfile(checkpoint):
        raise ConfigError(f"{checkpoint} does not exist: pre-train DAMSM first (python -m experiments fit "
                          "--config configs/denet/<dataset>_damsm.yaml) and pass its best.ckpt as "
                          "model.init_args.damsm")  # fmt: skip
    model = DAMSM.load_from_checkpoint(checkpoint, map_location=map_location)
    return model.eval().requires_grad_(False)
