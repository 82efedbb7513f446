"""DAMSM (AttnGAN, Xu et al., CVPR 2018): the text and image encoders DE-Net's recipe conditions on and scores with,
their matching losses, and the pre-training step (``python -m experiments fit --config configs/denet/*_damsm.yaml``).

* **Text encoder** (``bilstm``, AttnGAN's ``RNN_ENCODER``): word embedding (300-d, dropout 0.5), one bidirectional
  LSTM layer with 128 units per direction: word features ``e [B, L, 256]`` and the sentence feature ``ebar [B, 256]``
  (the two final hidden states). Or a transformers model (``text: minilm-offline`` or a hub id / folder): frozen,
  its token states and mean-pooled sentence projected to 256-d by trained linear layers.
* **Image encoder** (``CNN_ENCODER``): a timm backbone (AttnGAN: Inception-v3 at 299 px) read at two depths: the
  stride-16 map (Mixed_6e, 17x17) through a 1x1 conv gives region features ``v [B, R, 256]``; the last map pooled
  through a linear layer gives the global feature ``vbar [B, 256]``.
* **Losses** (``losses.py``; AttnGAN Eqs. 7-13 as ``code/miscc/losses.py`` and ``code/GlobalAttention.py`` compute
  them), for a batch of ``B`` matching pairs: word-region attention
  ``alpha = softmax_r(gamma1 * softmax_l(v_r . e_l))``, region context ``c_l = sum_r alpha_lr v_r``, relevance
  ``R(Q, D) = log(sum_l exp(gamma2 cos(c_l, e_l)))`` and the posterior over the batch with ``gamma3``:
  ``L_w = -sum_i log P(D_i|Q_i) - sum_i log P(Q_i|D_i)``, each a cross-entropy of ``gamma3 * R`` (``words_loss0``:
  images -> captions, ``words_loss1``: captions -> images); the sentence loss ``L_s`` replaces ``R`` by
  ``cos(vbar, ebar)`` (``sent_loss0/1``). The paper's Eq. 10 writes ``R = log(...)^(1/gamma2)``; the released
  ``words_loss`` does not divide by ``gamma2``, and the released DAMSM encoders (and every DF-GAN / DE-Net model
  trained with them) were trained without it, so neither do we
  (``tests/lightning_modules/editing/test_denet_losses.py`` checks the losses
  against the reference's numbers). Pairs of the same class (CUB) are not negatives (masked, as AttnGAN masks them).
  All pairs of the batch are scored at once.
* **Released encoders**: :func:`load_attngan_damsm` converts AttnGAN / DF-GAN ``text_encoder*.pth`` (an
  ``RNN_ENCODER`` state dict) and ``image_encoder*.pth`` (a ``CNN_ENCODER`` state dict: torchvision's Inception-v3
  blocks ``Conv2d_1a_3x3`` ... ``Mixed_7c``, ``emb_features`` 1x1 conv 768 -> nef, ``emb_cnn_code`` linear
  2048 -> nef) into a frozen :class:`DAMSM` (``BiLSTMTextEncoder`` + ``ImageEncoder`` on timm's ``inception_v3``).

Defaults follow AttnGAN's DAMSM configs [recall, unverified here]: gamma1 = 4, gamma2 = 5, gamma3 = 10, Adam lr 2e-3
with betas (0.5, 0.999), the RNN's gradient norm clipped to 0.25.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from lightning_modules.base import SuiteModule
from lightning_modules.editing.losses import damsm_losses
from lightning_modules.optim import OptimConfig
from suite_base.errors import ConfigError


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
                raise ConfigError("the BiLSTM text encoder needs model.init_args.text_encoder.init_args.vocab_size: "
                                  "the number of words of captions_DAMSM.pickle (max index + 1)")  # fmt: skip
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
                 pretrained: str | bool | None = False, train_backbone: bool = False) -> None:  # fmt: skip
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
        self.input_size, self.train_backbone, self.dim = input_size, train_backbone, dim
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
        text_encoder: :class:`TextEncoder` (``kind: bilstm``, AttnGAN's, with ``vocab_size`` the words of
            ``captions_DAMSM.pickle``: CUB 5,450, COCO 27,297 in AttnGAN's metadata; or a transformers id / folder,
            ``minilm-offline``: the offline MiniLM) with ``dim`` the joint space width (256).
        image_encoder: :class:`ImageEncoder` (a timm CNN, ``inception_v3`` at 299 px as AttnGAN, frozen unless
            ``train_backbone``) with the text encoder's ``dim``.
        gamma1, gamma2, gamma3: attention sharpness, word-relevance and posterior smoothing factors.
        optim: optimiser and schedule (AttnGAN: Adam 2e-3, betas 0.5/0.999).
    """

    monitor = "val/loss"
    monitor_mode = "min"

    def __init__(
        self,
        text_encoder: TextEncoder,
        image_encoder: ImageEncoder,
        *,
        gamma1: float = 4.0,
        gamma2: float = 5.0,
        gamma3: float = 10.0,
        optim: OptimConfig | None = None,
    ) -> None:
        super().__init__(optim)
        self.save_hyperparameters_with_networks()
        if text_encoder.dim != image_encoder.dim:
            raise ConfigError(f"the DAMSM text encoder's joint space is {text_encoder.dim}-d but the image encoder's "
                              f"is {image_encoder.dim}-d: set model.init_args.image_encoder.init_args.dim to "
                              f"{text_encoder.dim}")  # fmt: skip
        self.text_encoder = text_encoder
        self.image_encoder = image_encoder
        self.gammas = (gamma1, gamma2, gamma3)

    def setup(self, stage: str) -> None:
        check_vocabulary(self.text_encoder, self._trainer, "set model.init_args.text_encoder.init_args.vocab_size: {n}")

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
    """A frozen DAMSM from a pre-training checkpoint (``<run>/checkpoints/best.ckpt``). A checkpoint written before
    the encoders were injected (its hyper-parameters name ``text``, ``vocab_size``, ``dim`` ...) loads too."""
    import os

    if not os.path.isfile(checkpoint):
        raise ConfigError(f"{checkpoint} does not exist: pre-train DAMSM first (python -m experiments fit "
                          "--config configs/denet/<dataset>_damsm.yaml) and pass its best.ckpt as "
                          f"{DAMSM_CHECKPOINT_KEY}")  # fmt: skip
    saved = torch.load(checkpoint, map_location=map_location, weights_only=False)
    hparams = saved.get("hyper_parameters", {})
    if "text_encoder" in hparams:
        model = DAMSM.load_from_checkpoint(checkpoint, map_location=map_location)
    elif LEGACY_KEYS & set(hparams):
        model = _legacy_damsm(hparams)
        model.load_state_dict(saved["state_dict"])
    else:
        raise ConfigError(f"{checkpoint} does not say how its DAMSM encoders were built (a DAMSM built in Python): "
                          "save it from a run of configs/denet/<dataset>_damsm.yaml, or pass the DAMSM module itself "
                          "as DENet's damsm")  # fmt: skip
    return model.eval().requires_grad_(False)


LEGACY_KEYS = {"text", "vocab_size", "dim", "image_backbone"}  # DAMSM's arguments before the encoders were injected


def _legacy_damsm(hparams: dict) -> DAMSM:
    """A DAMSM built from the hyper-parameters of a checkpoint saved before the encoders were injected (the
    backbone's weights come from the checkpoint, so none are loaded here)."""
    dim = hparams.get("dim", 256)
    text = TextEncoder(hparams.get("text", "bilstm"), hparams.get("vocab_size"), dim)
    image = ImageEncoder(hparams.get("image_backbone", "inception_v3"), dim, hparams.get("image_input_size", 299),
                         False, hparams.get("train_backbone", False))  # fmt: skip
    gammas = {k: hparams[k] for k in ("gamma1", "gamma2", "gamma3") if k in hparams}
    return DAMSM(text, image, **gammas)


# ---- released AttnGAN / DF-GAN DAMSM encoders -------------------------------------------------------------------
# Where the files come from: AttnGAN's README, "Pretrained Model" ("DAMSM for bird" / "DAMSM for coco", saved to
# ``DAMSMencoders/``; DF-GAN's README links the same two archives as its pre-trained text encoders). AttnGAN's and
# DF-GAN's configs load ``DAMSMencoders/bird/text_encoder200.pth`` and ``DAMSMencoders/coco/text_encoder100.pth``,
# with the ``image_encoder*.pth`` of the same epoch beside each.
DAMSM_CHECKPOINT_KEY = "model.init_args.damsm.init_args.checkpoint"
RELEASED_DAMSM_FIX = (
    "give AttnGAN's / DF-GAN's released DAMSM: model.init_args.damsm.init_args.released_text_encoder: DAMSMencoders/"
    "bird/text_encoder200.pth (COCO: DAMSMencoders/coco/text_encoder100.pth) and model.init_args.damsm.init_args."
    "released_image_encoder: the image_encoder*.pth beside it (AttnGAN's README, Pretrained Model: DAMSM for bird / "
    "coco)"
)
_LSTM_PARAMS = ("weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0")


def attngan_text_encoder_keys() -> list[str]:
    """The parameter names of AttnGAN's ``RNN_ENCODER`` (``code/model.py``; DF-GAN / DE-Net ``models/DAMSM.py``):
    the embedding ``encoder`` and the bidirectional LSTM ``rnn`` (the dropout holds no weights)."""
    return ["encoder.weight"] + [f"rnn.{p}{d}" for d in ("", "_reverse") for p in _LSTM_PARAMS]


def _read_state_dict(path: str, what: str) -> dict[str, Tensor]:
    """The ``{name: tensor}`` in ``path`` (a plain ``torch.save(model.state_dict())`` file); ``module.`` prefixes
    of DataParallel are dropped. Anything else is a :class:`ConfigError` naming the file and the fix."""
    import os
    import pickle
    from collections.abc import Mapping

    if not os.path.isfile(path):
        raise ConfigError(f"{what} '{path}' does not exist: {RELEASED_DAMSM_FIX}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError) as err:
        raise ConfigError(f"{what} '{path}' is not a PyTorch state dict ({err}): {RELEASED_DAMSM_FIX}") from err
    if isinstance(state, Mapping) and isinstance(state.get("state_dict"), Mapping):
        raise ConfigError(f"{what} '{path}' is a Lightning checkpoint, not AttnGAN's state dict: pass a suite "
                          f"DAMSM checkpoint as {DAMSM_CHECKPOINT_KEY} instead, or {RELEASED_DAMSM_FIX}")  # fmt: skip
    if not isinstance(state, Mapping) or not state or not all(torch.is_tensor(v) for v in state.values()):
        raise ConfigError(f"{what} '{path}' is not a state dict of tensors (found {type(state).__name__}): "
                          f"{RELEASED_DAMSM_FIX}")  # fmt: skip
    return {k.removeprefix("module."): v for k, v in state.items()}


def _check_layout(source: str, what: str, state: dict, expected: dict, optional=()) -> None:
    """Raise a :class:`ConfigError` listing missing, unexpected and mis-shaped keys of ``state`` against
    ``expected`` (reference names -> shapes, or None where the shape cannot be known); keys in ``optional`` may be
    absent (old checkpoints)."""
    missing = [k for k in expected if k not in state and k not in optional]
    unexpected = [k for k in state if k not in expected]
    wrong = [
        f"{k} {tuple(state[k].shape)} (expected {tuple(shape)})"
        for k, shape in expected.items()
        if k in state and shape is not None and state[k].shape != shape
    ]
    if not (missing or unexpected or wrong):
        return
    found = (("missing", missing), ("unexpected", unexpected), ("wrong shapes", wrong))
    parts = [
        f"{name} ({len(keys)}): {', '.join(keys[:6])}{' ...' if len(keys) > 6 else ''}" for name, keys in found if keys
    ]
    hint = ""
    text_keys = set(attngan_text_encoder_keys())
    if what.startswith("image") and text_keys <= set(state):
        hint = " (this is a text encoder's state dict: the two paths look swapped)"
    elif what.startswith("text") and "emb_cnn_code.weight" in state:
        hint = " (this is an image encoder's state dict: the two paths look swapped)"
    raise ConfigError(f"{source} is not an AttnGAN / DF-GAN DAMSM {what}{hint}: {'; '.join(parts)}. "
                      f"{RELEASED_DAMSM_FIX}")  # fmt: skip


def convert_attngan_text_encoder(state: dict[str, Tensor], source: str = "the state dict") -> dict[str, Tensor]:
    """AttnGAN's ``RNN_ENCODER`` state dict -> :class:`BiLSTMTextEncoder`'s (``encoder.`` -> ``embed.``, ``rnn.``
    unchanged). Checks the layout: a 300-d embedding and one bidirectional LSTM layer whose hidden size is a quarter
    of its gate rows (128 per direction in the released encoders: 256-d words and sentences)."""
    embed, hh = state.get("encoder.weight"), state.get("rnn.weight_hh_l0")
    expected = dict.fromkeys(attngan_text_encoder_keys())  # names only while the sizes cannot be read
    if embed is not None and hh is not None and embed.ndim == 2 and hh.ndim == 2:
        vocab, hidden, width = embed.shape[0], hh.shape[1], 300
        expected["encoder.weight"] = torch.Size([vocab, width])
        for d in ("", "_reverse"):
            expected[f"rnn.weight_ih_l0{d}"] = torch.Size([4 * hidden, width])
            expected[f"rnn.weight_hh_l0{d}"] = torch.Size([4 * hidden, hidden])
            expected[f"rnn.bias_ih_l0{d}"] = expected[f"rnn.bias_hh_l0{d}"] = torch.Size([4 * hidden])
    _check_layout(source, "text encoder (RNN_ENCODER)", state, expected)
    return {("embed." + k.removeprefix("encoder.")) if k.startswith("encoder.") else k: v for k, v in state.items()}


def convert_attngan_image_encoder(state: dict[str, Tensor], encoder: ImageEncoder,
                                  source: str = "the state dict") -> dict[str, Tensor]:  # fmt: skip
    """AttnGAN's ``CNN_ENCODER`` state dict -> ``encoder``'s (an :class:`ImageEncoder` on timm's ``inception_v3``).

    The reference holds torchvision's Inception-v3 blocks under their torchvision names (``Conv2d_1a_3x3.conv``,
    ``Mixed_6e.branch7x7_1.bn`` ...), then ``emb_features`` (1x1 conv 768 -> nef, no bias) and ``emb_cnn_code``
    (linear 2048 -> nef). timm's ``inception_v3`` (1.0.x) keeps torchvision's block names, so a block maps to
    ``backbone.<same name>``; ``emb_features`` -> ``local``, ``emb_cnn_code`` -> ``glob``. The expected names and
    shapes are read from ``encoder`` itself, so a timm that renamed a block fails here with the names listed.
    BatchNorm ``num_batches_tracked`` may be absent (checkpoints saved before PyTorch 0.4.1). The reference feeds
    the images in [-1, 1] to Inception unchanged: ``mean`` / ``std`` are set to 0.5 so that ours does the same.
    """
    ours = encoder.state_dict()
    to_ours = {"emb_features.weight": "local.weight", "emb_cnn_code.weight": "glob.weight",
               "emb_cnn_code.bias": "glob.bias"}  # fmt: skip
    to_ours |= {k.removeprefix("backbone."): k for k in ours if k.startswith("backbone.")}
    expected = {ref: ours[k].shape for ref, k in to_ours.items()}
    optional = [ref for ref in expected if ref.endswith("num_batches_tracked")]
    _check_layout(source, "image encoder (CNN_ENCODER over Inception-v3)", state, expected, optional)
    converted = {to_ours[ref]: v for ref, v in state.items()}
    for k in optional:
        converted.setdefault(to_ours[k], ours[to_ours[k]])
    converted["mean"] = torch.full_like(ours["mean"], 0.5)
    converted["std"] = torch.full_like(ours["std"], 0.5)
    return converted


def frozen_damsm(checkpoint: str | None = None, released_text_encoder: str | None = None,
                 released_image_encoder: str | None = None) -> DAMSM:  # fmt: skip
    """The frozen DAMSM that DE-Net conditions on and scores with (its injected ``damsm`` network): AttnGAN's /
    DF-GAN's released encoders when ``released_text_encoder`` and ``released_image_encoder`` are given
    (:func:`load_attngan_damsm`; ``checkpoint`` is then not read), else this suite's DAMSM pre-training checkpoint
    ``checkpoint`` (a path, or a glob whose newest match loads)."""
    import logging

    from lightning_modules.backbones import resolve_checkpoint_path

    if bool(released_text_encoder) != bool(released_image_encoder):
        given, absent = ("released_text_encoder", "released_image_encoder")[:: 1 if released_text_encoder else -1]
        raise ConfigError(f"model.init_args.damsm.init_args.{given} is set but {absent} is not: the released DAMSM "
                          f"comes as a pair of files; {RELEASED_DAMSM_FIX}")  # fmt: skip
    if released_text_encoder:
        if checkpoint:
            logging.getLogger(__name__).info("released DAMSM encoders given: %s is not loaded", checkpoint)
        return load_attngan_damsm(released_text_encoder, released_image_encoder)  # DF-GAN / DE-Net's gammas 4, 5, 10
    if not checkpoint:
        raise ConfigError(f"DE-Net needs a DAMSM: {DAMSM_CHECKPOINT_KEY} (a DAMSM pre-training checkpoint: "
                          "python -m experiments fit --config configs/denet/<dataset>_damsm.yaml), or "
                          f"{RELEASED_DAMSM_FIX}")  # fmt: skip
    return load_damsm(resolve_checkpoint_path(checkpoint))


def load_attngan_damsm(text_encoder: str, image_encoder: str, gamma1: float = 4.0, gamma2: float = 5.0,
                       gamma3: float = 10.0) -> DAMSM:  # fmt: skip
    """A frozen :class:`DAMSM` holding AttnGAN's / DF-GAN's released ``text_encoder*.pth`` and ``image_encoder*.pth``
    (the encoders DF-GAN and DE-Net condition on and score with): BiLSTM over their vocabulary, Inception-v3 at
    299 px. The vocabulary size and the joint width (nef, 256 in the releases) are read from the files."""
    text_state = _read_state_dict(text_encoder, "text encoder")
    text = convert_attngan_text_encoder(text_state, f"'{text_encoder}'")
    vocab_size, dim = text["embed.weight"].shape[0], 2 * text["rnn.weight_hh_l0"].shape[1]
    model = DAMSM(TextEncoder("bilstm", vocab_size, dim), ImageEncoder("inception_v3", dim, 299), gamma1=gamma1,
                  gamma2=gamma2, gamma3=gamma3)  # fmt: skip
    model.text_encoder.net.load_state_dict(text)
    image_state = _read_state_dict(image_encoder, "image encoder")
    image = convert_attngan_image_encoder(image_state, model.image_encoder, f"'{image_encoder}'")
    model.image_encoder.load_state_dict(image)
    return model.eval().requires_grad_(False)
