"""The rule-based noun-phrase chunker: exact on the toy captions, sensible on COCO-style captions."""

from __future__ import annotations

import numpy as np
import pytest

from datamodules.toy.scenes import captions, render_scene
from lightning_modules.retrieval.phrases import noun_phrases, words


@pytest.mark.parametrize(
    "caption, expected",
    [
        ("A girl in a blue coat walks a dog.", ["a girl", "a blue coat", "a dog"]),
        ("Two men riding horses on the beach", ["two men", "the beach"]),
        ("a small red circle left of a large blue square", ["a small red circle", "a large blue square"]),
        (
            "there is a white star over a cross, with a green circle nearby",
            ["a white star", "a cross", "a green circle"],
        ),
        ("people walking", []),
    ],
)
def test_rule_chunker_on_examples(caption, expected):
    found = noun_phrases(caption)
    assert [p for _, _, p in found] == expected
    tokens = words(caption)
    assert all(" ".join(tokens[s:e]) == p for s, e, p in found)  # spans index the word list


FRAMING = {"an image", "a scene", "a picture", "a patterned background"}  # the toy captions' non-object phrases


def test_rule_chunker_finds_every_object_of_the_toy_captions():
    for seed in range(40):
        _, objects = render_scene(seed)
        for caption in captions(objects, np.random.default_rng(seed)):
            phrases = [p for _, _, p in noun_phrases(caption)]
            objects_found = [p for p in phrases if p not in FRAMING]
            assert len(objects_found) == len(objects), (caption, phrases)
            for obj in objects:
                assert sum(p.endswith(f"{obj['colour']} {obj['shape']}") for p in objects_found) == 1, (
                    caption,
                    phrases,
                )


def test_unknown_chunker_is_an_error():
    with pytest.raises(ValueError, match="noun_chunker"):
        noun_phrases("a dog", chunker="nltk")
    assert noun_phrases("a dog") == [(0, 2, "a dog")]
