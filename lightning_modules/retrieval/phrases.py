"""Noun phrases of a caption: LOUPE's semantics-level players on the text side ("a girl in a blue coat" -> "a girl",
"a blue coat").

With a spaCy pipeline installed (``noun_chunker: spacy``, e.g. ``en_core_web_sm``) its ``doc.noun_chunks`` are used.
Otherwise :func:`rule_noun_phrases`, a documented rule-based chunker (no tagger, no download): a phrase starts at a
determiner or number ("a", "an", "the", "two", "some" ...) and extends over the following words until a boundary
word: a preposition, a conjunction, a verb-like word from a closed list, or punctuation. It is exact on the toy
captions and good on the determiner-led phrases that dominate COCO / Flickr30K captions; it misses phrases without a
determiner ("people walking" -> nothing) and keeps an adjective-noun run as one phrase ("a large red bus").

Phrases are returned as word spans ``(start, end)`` (``end`` exclusive) over ``caption.split()`` after punctuation is
separated, so the text encoder's token offsets can be mapped onto them.
"""

from __future__ import annotations

import re
from functools import lru_cache

DETERMINERS = {
    "a", "an", "the", "this", "that", "these", "those", "some", "many", "several", "few", "his", "her", "their", "its",
    "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "another", "each", "every",
}  # fmt: skip
BOUNDARIES = {
    # prepositions and relation words
    "of", "in", "on", "at", "to", "with", "without", "by", "for", "from", "near", "nearby", "into", "onto", "over",
    "under", "above", "below", "beneath", "behind", "beside", "between", "next", "left", "right", "inside", "outside",
    "around", "through", "across", "along", "while", "as", "alone", "up", "down", "off",
    # conjunctions and clause words
    "and", "or", "but", "who", "which", "that", "where", "there",
    # frequent caption verbs (closed list; -ing words are handled by a rule below)
    "is", "are", "was", "were", "be", "has", "have", "holds", "sits", "stands", "looks", "rides", "eats", "plays",
    "walks", "runs", "carries", "wears", "lies", "flies", "jumps", "sit", "stand", "walk", "hold", "play", "ride",
}  # fmt: skip
_PUNCT = re.compile(r"([,.;:!?])")


def words(caption: str) -> list[str]:
    """Lower-cased words with punctuation as separate items."""
    return _PUNCT.sub(r" \1 ", caption.lower()).split()


def rule_noun_phrases(caption: str) -> list[tuple[int, int, str]]:
    """Determiner-led noun phrases as ``(start, end, text)`` word spans (see the module docstring)."""
    tokens = words(caption)
    phrases, i = [], 0
    while i < len(tokens):
        if tokens[i] in DETERMINERS:
            j = i + 1
            while j < len(tokens):
                word = tokens[j]
                if word in BOUNDARIES or word in DETERMINERS or _PUNCT.fullmatch(word):
                    break
                if word.endswith("ing") and j > i + 1:  # "a man riding ..." -> "a man"
                    break
                j += 1
            if j > i + 1:
                phrases.append((i, j, " ".join(tokens[i:j])))
            i = j
        else:
            i += 1
    return phrases


@lru_cache(maxsize=4)
def _spacy(model: str):
    import spacy

    return spacy.load(model, disable=["ner", "lemmatizer"])


def noun_phrases(
    caption: str, chunker: str = "rules", spacy_model: str = "en_core_web_sm"
) -> list[tuple[int, int, str]]:
    """Noun phrases of ``caption`` with ``chunker`` ``rules`` or ``spacy`` (word spans over :func:`words`)."""
    if chunker == "rules":
        return rule_noun_phrases(caption)
    if chunker != "spacy":
        raise ValueError(f"noun_chunker must be 'rules' or 'spacy', got {chunker!r}")
    try:
        nlp = _spacy(spacy_model)
    except (ImportError, OSError) as err:
        raise ValueError(
            f"noun_chunker 'spacy' needs spaCy and its '{spacy_model}' pipeline ({err}); install them or use 'rules'"
        ) from err
    doc = nlp(" ".join(words(caption)))
    return [(c.start, c.end, c.text) for c in doc.noun_chunks]
