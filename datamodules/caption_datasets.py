"""Datasets and collates of the caption DataModules (:mod:`datamodules.captions`): (image, caption) pairs and images
with all their captions for retrieval, and the editing items (image, own / target / mismatched caption) of DE-Net."""

from __future__ import annotations

import random
from pathlib import Path

import torch
from torch import Tensor
from torch.utils.data import Dataset, default_collate

from datamodules.caption_formats import encode_caption
from datamodules.images import load_rgb
from suite_base.errors import CorruptFileError, DataError


class CaptionPairs(Dataset):
    """Training items: one per (image, caption) pair -> ``{"image", "caption", "image_id", "text_id"}``."""

    def __init__(self, entries: list[dict], transform) -> None:
        self.entries = entries
        self.pairs = [(i, j) for i, e in enumerate(entries) for j in range(len(e["captions"]))]
        self.transform = transform

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> dict:
        i, j = self.pairs[index]
        entry = self.entries[i]
        return {
            "image": self.transform(_load(entry["path"])),
            "caption": entry["captions"][j],
            "image_id": entry["imgid"],
            "text_id": entry["sentids"][j],
        }


class CaptionImages(Dataset):
    """Evaluation items: one per image with all its captions."""

    def __init__(self, entries: list[dict], transform) -> None:
        self.entries, self.transform = entries, transform

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, index: int) -> dict:
        entry = self.entries[index]
        return {
            "image": self.transform(_load(entry["path"])),
            "captions": entry["captions"],
            "image_id": entry["imgid"],
            "text_ids": entry["sentids"],
        }


def _load(path: str):
    try:
        return load_rgb(path)
    except CorruptFileError as err:
        raise DataError(f"{err}; replace the file or remove its entry from the JSON") from err


def _decode_all(entries: list[dict]) -> list[str]:
    """One problem per image of ``entries`` that PIL cannot decode."""
    problems = []
    for entry in entries:
        try:
            load_rgb(entry["path"])
        except CorruptFileError as err:
            problems.append(str(err).split(". Replace")[0])
    return problems


def collate_pairs(items: list[dict]) -> dict:
    """Stack images and ids; captions stay a list of strings. Items that count the samples skipped before them
    (tar shards) give the batch's ``skipped``."""
    batch = {
        "image": default_collate([it["image"] for it in items]),
        "captions": [it["caption"] for it in items],
        "image_ids": torch.tensor([it["image_id"] for it in items]),
        "text_image_ids": torch.tensor([it["image_id"] for it in items]),
        "text_ids": torch.tensor([it["text_id"] for it in items]),
    }
    if "skipped" in items[0]:
        batch["skipped"] = torch.tensor(sum(it["skipped"] for it in items))
    return batch


def collate_images(items: list[dict]) -> dict:
    """Stack images; flatten every image's captions into one list with the image id of each caption."""
    return {
        "image": default_collate([it["image"] for it in items]),
        "image_ids": torch.tensor([it["image_id"] for it in items]),
        "captions": [c for it in items for c in it["captions"]],
        "text_image_ids": torch.tensor([it["image_id"] for it in items for _ in it["captions"]]),
        "text_ids": torch.tensor([t for it in items for t in it["text_ids"]]),
    }


def crop_around_box(image, box: tuple[float, float, float, float]):
    """AttnGAN's CUB crop: a square of side 1.5 x max(w, h) around the box centre, clipped to the image."""
    width, height = image.size
    x, y, w, h = box
    r = int(max(w, h) * 0.75)
    cx, cy = int((2 * x + w) / 2), int((2 * y + h) / 2)
    return image.crop((max(0, cx - r), max(0, cy - r), min(width, cx + r), min(height, cy + r)))


class EditingImages(Dataset):
    """Items ``{"image" [-1, 1], "caption", "tokens", "wrong_caption", "wrong_tokens", "target_caption",
    "target_tokens", "index", "class_id"}`` (``class_id`` -1 without classes; DAMSM masks same-class negatives).

    ``caption`` describes the image (training: a random one of its captions; evaluation: the first). ``wrong_caption``
    describes another image (of another class when classes are known): the discriminator's mismatched pair.
    ``target_caption`` is the editing target: a line of ``edits/<name>.txt`` when the dataset has one (the toy's
    recolour edits), otherwise a caption of another image. Evaluation picks are fixed by ``seed``.
    """

    def __init__(self, entries: list[dict], transform, wordtoix: dict[str, int], max_words: int, train: bool,
                 seed: int, root: Path, boxes: dict | None = None) -> None:  # fmt: skip
        self.entries, self.transform, self.wordtoix = entries, transform, wordtoix
        self.max_words, self.train, self.seed, self.boxes = max_words, train, seed, boxes
        self.edits = {}
        for e in entries:
            path = root / "edits" / f"{e['name']}.txt"
            if path.is_file():
                self.edits[e["name"]] = [line.strip() for line in path.read_text().splitlines() if line.strip()]
        for e in entries:  # every caption must encode: fail now, naming the file and line, not mid-epoch
            for k, text in enumerate(e["captions"]):
                encode_caption(text, wordtoix, max_words, f"{root / 'text' / e['name']}.txt line {k + 1}")
        self.by_class: dict = {}
        for i, e in enumerate(entries):
            self.by_class.setdefault(e["class"], []).append(i)
        self.class_ids = {c: k for k, c in enumerate(sorted(c for c in self.by_class if c is not None))}

    def __len__(self) -> int:
        return len(self.entries)

    def _rng(self, index: int) -> random.Random:
        if self.train:  # drawn from torch's generator: seed_everything (and Lightning's worker seeding) fix it
            return random.Random(int(torch.randint(2**62, (1,))))
        return random.Random(self.seed * 1_000_003 + index)

    def _other(self, index: int, rng: random.Random) -> int:
        cls = self.entries[index]["class"]
        if cls is not None and len(self.by_class) > 1:
            while True:
                j = rng.randrange(len(self.entries))
                if self.entries[j]["class"] != cls:
                    return j
        j = rng.randrange(len(self.entries) - 1) if len(self.entries) > 1 else 0
        return j + 1 if j >= index and len(self.entries) > 1 else j

    def _encode(self, text: str, where: str) -> Tensor:
        return torch.tensor(encode_caption(text, self.wordtoix, self.max_words, where))

    def __getitem__(self, index: int) -> dict:
        entry, rng = self.entries[index], self._rng(index)
        image = _load(entry["path"])
        if self.boxes is not None:
            image = crop_around_box(image, self.boxes[entry["name"]])
        caption = entry["captions"][rng.randrange(len(entry["captions"])) if self.train else 0]
        other = self.entries[self._other(index, rng)]
        wrong = other["captions"][rng.randrange(len(other["captions"]))]
        edits = self.edits.get(entry["name"])
        target = edits[rng.randrange(len(edits))] if edits else self.entries[self._other(index, rng)]["captions"][0]
        return {
            "image": self.transform(image),
            "index": index,
            "class_id": self.class_ids.get(entry["class"], -1),
            "caption": caption, "tokens": self._encode(caption, entry["name"]),
            "wrong_caption": wrong, "wrong_tokens": self._encode(wrong, other["name"]),
            "target_caption": target, "target_tokens": self._encode(target, f"edit target of {entry['name']}"),
        }  # fmt: skip


def _pad(seqs: list[Tensor]) -> tuple[Tensor, Tensor]:
    lengths = torch.tensor([len(s) for s in seqs])
    return torch.nn.utils.rnn.pad_sequence(seqs, batch_first=True, padding_value=0), lengths


def collate_editing(items: list[dict]) -> dict:
    """Stack images; pad each token list (0 = AttnGAN's ``<end>``) with its lengths."""
    out = {"image": torch.stack([it["image"] for it in items]), "index": torch.tensor([it["index"] for it in items]),
           "class_ids": torch.tensor([it["class_id"] for it in items])}  # fmt: skip
    for key in ("", "wrong_", "target_"):
        out[f"{key}captions"] = [it[f"{key}caption"] for it in items]
        out[f"{key}tokens"], out[f"{key}lengths"] = _pad([it[f"{key}tokens"] for it in items])
    return out
