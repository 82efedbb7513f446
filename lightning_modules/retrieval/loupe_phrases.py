"""LOUPE's phrase spans: a caption's noun phrases as character spans and as token masks
(:mod:`lightning_modules.retrieval.loupe`)."""

from __future__ import annotations

import re
from functools import lru_cache

import torch
from torch import Tensor

from lightning_modules.retrieval.phrases import noun_phrases

_WORD = re.compile(r"[,.;:!?]|[^\s,.;:!?]+")  # the items of phrases.words(), with their character positions


@lru_cache(maxsize=65536)
def phrase_char_spans(caption: str, chunker: str = "rules") -> tuple[tuple[int, int, str], ...]:
    """Noun phrases of ``caption`` as character spans ``(start, end, text)`` (cached per caption)."""
    items = [(m.start(), m.end()) for m in _WORD.finditer(caption)]
    spans = []
    for start, end, text in noun_phrases(caption, chunker):
        if end <= len(items):
            spans.append((items[start][0], items[end - 1][1], text))
    return tuple(spans)


def phrase_token_masks(
    captions: list[str], offsets: Tensor, max_phrases: int, chunker: str = "rules"
) -> tuple[Tensor, list[list[str]]]:
    """Bool ``[B, P, L]``: the tokens of each caption's first ``max_phrases`` noun phrases (from the tokenizer's
    character ``offsets [B, L, 2]``), and the phrase texts. Padded phrases have no token."""
    B = len(captions)
    spans = torch.zeros(B, max_phrases, 2, dtype=torch.long)
    texts = []
    for b, caption in enumerate(captions):
        found = phrase_char_spans(caption, chunker)[:max_phrases]
        texts.append([t for _, _, t in found])
        for p, (start, end, _) in enumerate(found):
            spans[b, p, 0], spans[b, p, 1] = start, end
    spans = spans.to(offsets.device)
    tok_start, tok_end = offsets[..., 0].unsqueeze(1), offsets[..., 1].unsqueeze(1)  # [B, 1, L]
    real = tok_end > tok_start  # special and padding tokens have (0, 0)
    masks = real & (tok_start < spans[..., 1:2]) & (tok_end > spans[..., 0:1])
    return masks, texts
