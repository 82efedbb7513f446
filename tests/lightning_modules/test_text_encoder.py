"""The offline MiniLM text encoder and the truncation-counting tokenizer (HF_HUB_OFFLINE: nothing downloads)."""

from __future__ import annotations

import pytest
import torch

from experiments.errors import ConfigError
from lightning_modules.retrieval.text import CaptionTokenizer, check_vocabulary, load_text_encoder


@pytest.fixture(scope="module")
def minilm():
    return load_text_encoder("minilm-offline")


def test_offline_minilm_is_a_real_pretrained_encoder(minilm):
    encoder, tokenizer = minilm
    assert encoder.config.hidden_size == 384 and encoder.config.num_hidden_layers == 6
    enc, _ = CaptionTokenizer(tokenizer)(["a red circle", "a crimson disc", "a blue truck on a highway"])
    with torch.no_grad():
        hidden = encoder(**enc).last_hidden_state
    mask = enc["attention_mask"].unsqueeze(-1)
    emb = torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1)
    # pretrained semantics: the two circle captions are closer to each other than to the truck
    assert emb[0] @ emb[1] > emb[0] @ emb[2] + 0.1


def test_truncation_is_counted(minilm):
    _, tokenizer = minilm
    tok = CaptionTokenizer(tokenizer, max_length=8)
    enc, truncated = tok(["a dog", "a very long caption " * 5, "short"])
    assert truncated == 1 and enc["input_ids"].shape == (3, 8) and tok.truncated_total == 1


def test_vocabulary_mismatch_is_a_clear_error(minilm):
    encoder, tokenizer = minilm
    small = torch.nn.Embedding(1000, 384)
    encoder_view = type("E", (), {"get_input_embeddings": lambda self: small})()
    with pytest.raises(ConfigError, match=r"30522 tokens but the encoder embeds only 1000"):
        check_vocabulary(tokenizer, encoder_view, "tiny")
    with pytest.raises(ConfigError, match="cannot load text encoder"):
        load_text_encoder("/no/such/folder")
