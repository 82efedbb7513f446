"""Image-caption data: the Karpathy-split JSON format (retrieval) and the AttnGAN / DF-GAN metadata layout (editing).

**Karpathy JSON** (``dataset_coco.json``, ``dataset_flickr30k.json``; :class:`CaptionsDataModule`). Layout read::

    <root>/<json_name>                       {"images": [{"filename", "filepath"?, "imgid", "split", "sentences"}]}
    <root>/<image_dir>/<filepath>/<filename> the images (COCO: filepath train2014 / val2014; Flickr30K: none)

Splits follow Karpathy & Fei-Fei (2015): ``train`` (COCO adds ``restval``), ``val`` and ``test`` (COCO 5K test
images / 25,010 captions; Flickr30K 1K / 5,000). Training items are (image, one caption) pairs, so an epoch sees every
caption once; evaluation items are images with ALL their captions, flattened by the collate into one caption list
with ``text_image_ids`` (the protocol ranks every test caption against every test image).

With ``dataset: toy`` the toy scenes (:mod:`datamodules.toy.scenes`) are written under ``root`` first, in the same
format, and read by the same code. Captions stay strings here; the model tokenizes them (and counts truncations).

**AttnGAN / DF-GAN layout** (CUB-200-2011 and COCO-2014 as text-to-image and editing work ships them;
:class:`TextEditingDataModule`)::

    <root>/{train,test}/filenames.pickle     image names (CUB: ``002.Laysan_Albatross/Laysan_Albatross_0002_1027``)
    <root>/text/<name>.txt                   captions, one per line (10 per CUB image, 5 per COCO image)
    <root>/captions_DAMSM.pickle             [train_captions, test_captions, ixtoword, wordtoix]: the vocabulary
    <root>/CUB_200_2011/images/<name>.jpg    CUB, cropped around bounding_boxes.txt at 1.5x max(w, h)
    <root>/images/<name>.jpg                 COCO

Captions are tokenised as AttnGAN does (lower-case word characters) into ``wordtoix`` indices, at most 18 words.
"""

from __future__ import annotations

import json
import pickle
import random
import re
from pathlib import Path
from typing import Literal

import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, create_transform
from torch import Tensor
from torch.utils.data import Dataset, default_collate

from datamodules.base import SuiteDataModule
from datamodules.images import load_rgb
from datamodules.toy import ensure_written
from datamodules.toy.scenes import write_toy_scenes
from suite_base.errors import CorruptFileError, DataError

JSON_NAMES = {"coco": "dataset_coco.json", "flickr30k": "dataset_flickr30k.json", "toy": "dataset_toy.json"}
IMAGE_DIRS = {"coco": "", "flickr30k": "flickr30k-images", "toy": ""}
SPLITS = {"train": ("train", "restval"), "val": ("val",), "test": ("test",)}


def read_karpathy(json_path: Path, image_root: Path, split: str, check_files: bool = True,
                  problems: list[str] | None = None) -> list[dict]:  # fmt: skip
    """The entries of ``split`` as ``{"path", "imgid", "captions", "sentids"}``; every problem names its entry.

    With a ``problems`` list, a malformed entry or a missing image is appended there (and the entry skipped) instead
    of raising; a missing or unreadable JSON still raises."""
    if not json_path.is_file():
        raise DataError(
            f"{json_path} does not exist. Expected the Karpathy split JSON ({', '.join(JSON_NAMES.values())})"
        )
    try:
        spec = json.loads(json_path.read_text())
    except json.JSONDecodeError as err:
        raise DataError(f"{json_path} is not valid JSON ({err}); re-download the Karpathy split file") from err
    if not isinstance(spec, dict) or not isinstance(spec.get("images"), list):
        raise DataError(f"{json_path} has no 'images' list; it is not a Karpathy split file")
    entries, missing = [], []
    for index, image in enumerate(spec["images"]):
        if image.get("split") not in SPLITS[split]:
            continue
        name = image.get("filename")
        where = f"{json_path}: images[{index}] (filename {name!r}, imgid {image.get('imgid')})"
        sentences = image.get("sentences") or []
        raws = [s.get("raw", "").strip() for s in sentences if isinstance(s, dict)]
        error = None
        if not name:
            error = f"{where} has no 'filename'"
        elif not raws or not all(raws):
            error = f"{where} has an empty caption list or an empty caption; fix or remove the entry"
        if error is not None:
            if problems is None:
                raise DataError(error)
            problems.append(error)
            continue
        path = image_root / image.get("filepath", "") / name
        if check_files and not path.is_file():
            if problems is not None:
                problems.append(f"{path}: named in {where} but missing")
                continue
            missing.append(f"{where}: {path}")
        entries.append(
            {
                "path": str(path),
                "imgid": int(image.get("imgid", index)),
                "captions": raws,
                "sentids": [int(s.get("sentid", -1)) for s in sentences],
            }
        )
    if missing:
        raise DataError(
            f"{len(missing)} images of split '{split}' are missing, e.g. {missing[0]}"
            + (f" and {missing[1]}" if len(missing) > 1 else "")
            + ". Point data.image_dir at the image folder or re-extract the images."
        )
    if not entries and problems is None:
        raise DataError(f"{json_path} has no images in split '{split}' (split values: {SPLITS[split]})")
    return entries


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


class CaptionsDataModule(SuiteDataModule):
    """COCO / Flickr30K (Karpathy splits) or the toy scenes, for image-text retrieval.

    Args:
        root: folder holding the JSON (and the images under ``image_dir``).
        dataset: ``coco``, ``flickr30k`` or ``toy`` (written under ``root`` first).
        json_name: the split file name (default per dataset).
        image_dir: image folder under ``root`` (default: ``""`` for COCO, whose JSON names ``train2014/`` or
            ``val2014/`` per image, and ``flickr30k-images`` for Flickr30K).
        batch_size: per-device batch size (training pairs, evaluation images).
        num_workers: loader workers per device.
        img_size: image resolution.
        scale: RandomResizedCrop area range of training images.
        hflip: horizontal flip probability (0 by default: captions say "left of").
        mean: normalisation mean.
        std: normalisation std.
        pin_memory: pin host memory.
        persistent_workers: keep workers between epochs.
        seed: seed of the toy data.
        toy_train: toy training images.
        toy_eval: toy val and test images each.
        toy_img_size: side of the toy images.
    """

    def __init__(
        self,
        root: str = "data/coco",
        dataset: Literal["coco", "flickr30k", "toy"] = "coco",
        json_name: str | None = None,
        image_dir: str | None = None,
        batch_size: int = 128,
        num_workers: int = 8,
        img_size: int = 224,
        scale: tuple[float, float] = (0.5, 1.0),
        hflip: float = 0.0,
        mean: tuple[float, float, float] = IMAGENET_DEFAULT_MEAN,
        std: tuple[float, float, float] = IMAGENET_DEFAULT_STD,
        pin_memory: bool = True,
        persistent_workers: bool = True,
        seed: int = 0,
        toy_train: int = 600,
        toy_eval: int = 100,
        toy_img_size: int = 64,
    ) -> None:
        super().__init__(root, dataset, batch_size, num_workers, pin_memory, persistent_workers, "raise", seed)
        self.json_path = Path(root) / (json_name or JSON_NAMES[dataset])
        self.image_root = Path(root) / (IMAGE_DIRS[dataset] if image_dir is None else image_dir)
        self.img_size = img_size
        self.mean, self.std = tuple(mean), tuple(std)
        self.train_transform = create_transform(
            img_size, is_training=True, scale=tuple(scale), hflip=hflip, color_jitter=0.0, auto_augment=None,
            interpolation="bicubic", mean=self.mean, std=self.std,
        )  # fmt: skip
        self.eval_transform = create_transform(
            img_size, is_training=False, crop_pct=1.0, interpolation="bicubic", mean=self.mean, std=self.std
        )
        self.toy_options = dict(train=toy_train, val=toy_eval, test=toy_eval, img_size=toy_img_size, seed=seed)

    def prepare_data(self) -> None:
        if self.dataset == "toy":
            ensure_written(self.root, write_toy_scenes, **self.toy_options)

    def entries(self, split: str) -> list[dict]:
        return read_karpathy(self.json_path, self.image_root, split)

    def check_dataset(self, decode: bool = True) -> tuple[dict, list[str]]:
        """Validate the three Karpathy splits without training: images and captions per split; malformed entries,
        missing images and (``decode``) images PIL cannot decode, each naming its path. Returns (summary, problems).
        """
        summary, problems = {}, []
        for split in SPLITS:
            found: list[str] = []
            try:
                entries = read_karpathy(self.json_path, self.image_root, split, problems=found)
            except DataError as err:
                return summary, [str(err)]
            problems += found
            if not entries and not found:
                problems.append(f"{self.json_path} has no images in split '{split}' (split values: {SPLITS[split]})")
            summary[split] = {"images": len(entries), "captions": sum(len(e["captions"]) for e in entries)}
            problems += _decode_all(entries) if decode else []
        return summary, problems

    def setup(self, stage: str) -> None:
        if stage == "fit":
            self.train_set = CaptionPairs(self.entries("train"), self.train_transform)
        if stage in ("fit", "validate"):
            self.val_set = CaptionImages(self.entries("val"), self.eval_transform)
        if stage in ("test", "predict"):
            self.test_set = CaptionImages(self.entries("test"), self.eval_transform)

    def synthetic_batch(self, batch_size: int) -> dict:
        """A random training batch of this data's shapes (benchmarks)."""
        return {
            "image": torch.randn(batch_size, 3, self.img_size, self.img_size),
            "captions": ["a small red circle left of a large blue square"] * batch_size,
            "image_ids": torch.arange(batch_size),
            "text_image_ids": torch.arange(batch_size),
            "text_ids": torch.arange(batch_size),
        }

    def train_dataloader(self):
        return self.loader(self.train_set, train=True, drop_last=True, collate_fn=collate_pairs)

    def val_dataloader(self):
        return self.loader(self.val_set, train=False, collate_fn=collate_images)

    def test_dataloader(self):
        return self.loader(self.test_set, train=False, collate_fn=collate_images)


# ---- AttnGAN / DF-GAN metadata layout (text-guided image generation and editing: DE-Net) -------------------------

ATTNGAN_IMAGES = {"cub": ("CUB_200_2011/images", ".jpg"), "coco": ("images", ".jpg"), "toy": ("images", ".png")}
ATTNGAN_LAYOUT = ("<root>/{train,test}/filenames.pickle, <root>/text/<name>.txt (one caption per line), "
                  "<root>/captions_DAMSM.pickle, images under <root>/<image_dir>/<name><ext>")  # fmt: skip


def _read_pickle(path: Path, what: str):
    if not path.is_file():
        raise DataError(f"{path} does not exist: expected {what}. Download the AttnGAN/DF-GAN metadata for this "
                        f"dataset into {path.parent.parent if path.parent.name in ('train', 'test') else path.parent}"
                        f" (layout: {ATTNGAN_LAYOUT})")  # fmt: skip
    try:
        with open(path, "rb") as f:
            return pickle.load(f, encoding="latin1")
    except (pickle.UnpicklingError, EOFError, ValueError, AttributeError) as err:
        raise DataError(f"{path} is not a readable pickle ({err}); re-download the metadata") from err


def attngan_tokens(text: str) -> list[str]:
    """AttnGAN's tokenisation: lower-case runs of word characters."""
    return re.findall(r"\w+", text.lower())


def read_attngan(root: Path, split: str, image_dir: str, image_ext: str, check_files: bool = True,
                 problems: list[str] | None = None) -> list[dict]:  # fmt: skip
    """The images of ``split`` (``train`` / ``test``) as ``{"name", "path", "captions", "class"}``.

    Names come from ``<split>/filenames.pickle``; captions from ``text/<name>.txt`` (empty lines skipped); the class
    is the name's folder (CUB: ``002.Laysan_Albatross``) or ``None``. Missing text files or images are listed; with a
    ``problems`` list each of them (and each caption file without a caption) is appended there and its image skipped
    instead of raising.
    """
    names = _read_pickle(root / split / "filenames.pickle", f"the list of {split} image names")
    if not isinstance(names, list | tuple) or not names:
        raise DataError(f"{root / split / 'filenames.pickle'} holds {type(names).__name__}, not a list of names")
    entries, missing_text, missing_images = [], [], []
    for name in names:
        text_path = root / "text" / f"{name}.txt"
        image_path = root / image_dir / f"{name}{image_ext}"
        if not text_path.is_file():
            missing_text.append(str(text_path))
            continue
        if check_files and not image_path.is_file():
            missing_images.append(str(image_path))
            continue
        lines = [line.strip() for line in text_path.read_text(encoding="utf-8", errors="replace").splitlines()]
        captions = [line for line in lines if line]
        if not captions:
            error = f"{text_path} has no caption; add its captions or remove {name} from the filenames"
            if problems is None:
                raise DataError(error)
            problems.append(error)
            continue
        entries.append({"name": name, "path": str(image_path), "captions": captions,
                        "class": name.split("/")[0] if "/" in name else None})  # fmt: skip
    if problems is not None:
        listed = root / split / "filenames.pickle"
        problems += [f"{path}: named in {listed} but missing" for path in missing_text + missing_images]
        return entries
    for missing, what in ((missing_text, "caption files"), (missing_images, "images")):
        if missing:
            raise DataError(f"{root / split / 'filenames.pickle'} names {len(missing)} {what} that do not exist, "
                            f"e.g. {', '.join(missing[:3])}. Put the files there (or fix data.image_dir).")  # fmt: skip
    return entries


def read_vocabulary(root: Path) -> dict[str, int]:
    """``wordtoix`` of ``captions_DAMSM.pickle`` (AttnGAN's ``[train_caps, test_caps, ixtoword, wordtoix]``)."""
    path = root / "captions_DAMSM.pickle"
    data = _read_pickle(path, "AttnGAN's [train_captions, test_captions, ixtoword, wordtoix]")
    if not isinstance(data, list | tuple) or len(data) != 4 or not isinstance(data[3], dict):
        raise DataError(f"{path} is not AttnGAN's [train_captions, test_captions, ixtoword, wordtoix]")
    return dict(data[3])


def encode_caption(text: str, wordtoix: dict[str, int], max_words: int, where: str) -> list[int]:
    """Word indices of ``text`` (unknown words dropped, the first ``max_words`` kept); no known word is an error."""
    ids = [wordtoix[w] for w in attngan_tokens(text) if w in wordtoix]
    if not ids:
        raise DataError(f"{where}: the caption {text!r} has no word of the vocabulary (captions_DAMSM.pickle); "
                        "fix the caption or rebuild the vocabulary")  # fmt: skip
    return ids[:max_words]


def cub_boxes(root: Path) -> dict[str, tuple[float, float, float, float]]:
    """CUB's ``{name: (x, y, w, h)}`` from ``CUB_200_2011/images.txt`` and ``bounding_boxes.txt``."""
    folder = root / "CUB_200_2011"
    paths = {}
    for line in _lines(folder / "images.txt"):
        index, path = line.split(maxsplit=1)
        paths[index] = path.rsplit(".", 1)[0]
    boxes = {}
    for number, line in enumerate(_lines(folder / "bounding_boxes.txt"), start=1):
        parts = line.split()
        if len(parts) != 5 or parts[0] not in paths:
            raise DataError(f"{folder / 'bounding_boxes.txt'}:{number}: expected '<image id> x y w h' with an id "
                            f"of images.txt, got {line!r}")  # fmt: skip
        boxes[paths[parts[0]]] = tuple(float(v) for v in parts[1:])
    return boxes


def _lines(path: Path) -> list[str]:
    if not path.is_file():
        raise DataError(f"{path} does not exist; CUB crops need CUB_200_2011/images.txt and bounding_boxes.txt")
    return [line for line in path.read_text().splitlines() if line.strip()]


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


class TextEditingDataModule(SuiteDataModule):
    """CUB-200-2011 / COCO-2014 in the AttnGAN / DF-GAN metadata layout, or the toy edit scenes (same layout).

    Args:
        root: dataset folder (``data/birds``, ``data/coco``; the toy is written there).
        dataset: ``cub`` (images cropped around the bird box at 1.5x), ``coco`` or ``toy``.
        image_dir: image folder under ``root`` (default: ``CUB_200_2011/images``, ``images``, ``images``).
        image_ext: image file extension (default ``.jpg``; the toy's ``.png``).
        image_size: side of the images (256 in DE-Net).
        val_images: training images (drawn with ``seed``) held out as the validation split (DE-Net evaluates on a
            valid and a test split; how it made the valid split is unknown: docs/denet.md).
        max_words: caption words kept (AttnGAN's 18).
        batch_size, num_workers, pin_memory, persistent_workers, seed: loader settings.
        toy_train, toy_test, toy_img_size: the toy's images and side.
    """

    def __init__(
        self,
        root: str = "data/birds",
        dataset: Literal["cub", "coco", "toy"] = "cub",
        image_dir: str | None = None,
        image_ext: str | None = None,
        image_size: int = 256,
        val_images: int = 1000,
        max_words: int = 18,
        batch_size: int = 32,
        num_workers: int = 8,
        pin_memory: bool = True,
        persistent_workers: bool = True,
        seed: int = 0,
        toy_train: int = 400,
        toy_test: int = 100,
        toy_img_size: int = 32,
    ) -> None:
        super().__init__(root, dataset, batch_size, num_workers, pin_memory, persistent_workers, "raise", seed)
        default_dir, default_ext = ATTNGAN_IMAGES[dataset]
        self.image_dir, self.image_ext = image_dir or default_dir, image_ext or default_ext
        self.image_size, self.val_images, self.max_words = image_size, val_images, max_words
        self.toy_options = dict(train=toy_train, test=toy_test, img_size=toy_img_size, seed=seed)
        from torchvision import transforms as T

        norm = [T.ToTensor(), T.Normalize((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))]
        self.train_transform = T.Compose([
            T.Resize(int(image_size * 76 / 64)), T.RandomCrop(image_size), T.RandomHorizontalFlip(), *norm,
        ])  # fmt: skip
        self.eval_transform = T.Compose([T.Resize(image_size), T.CenterCrop(image_size), *norm])

    def prepare_data(self) -> None:
        if self.dataset == "toy":
            from datamodules.toy.edit_scenes import write_toy_edit_scenes

            ensure_written(self.root, write_toy_edit_scenes, **self.toy_options)

    @property
    def wordtoix(self) -> dict[str, int]:
        if not hasattr(self, "_wordtoix"):
            self._wordtoix = read_vocabulary(Path(self.root))
        return self._wordtoix

    @property
    def vocab_size(self) -> int:
        return max(self.wordtoix.values()) + 1

    def entries(self, split: str) -> list[dict]:
        root = Path(self.root)
        if split == "test":
            return read_attngan(root, "test", self.image_dir, self.image_ext)
        entries = read_attngan(root, "train", self.image_dir, self.image_ext)
        if not 0 <= self.val_images < len(entries):
            raise DataError(f"data.val_images is {self.val_images} but the training split has {len(entries)} "
                            "images; hold out fewer")  # fmt: skip
        held = set(random.Random(self.seed).sample(range(len(entries)), self.val_images))
        return [e for i, e in enumerate(entries) if (i in held) == (split == "val")]

    def check_dataset(self, decode: bool = True) -> tuple[dict, list[str]]:
        """Validate the layout without training: images and captions of ``train`` (with the ``val_images`` held out
        of it) and ``test``; the vocabulary; missing caption files and images, captions (and edit targets) with no
        word of the vocabulary, CUB images without a bounding box, and (``decode``) images PIL cannot decode, each
        naming its path. Returns (summary, problems)."""
        summary, problems = {}, []
        root = Path(self.root)
        try:
            wordtoix = self.wordtoix
        except DataError as err:
            problems.append(str(err))
            wordtoix = None
        boxes = None
        if self.dataset == "cub":
            try:
                boxes = cub_boxes(root)
            except DataError as err:
                problems.append(str(err))
        for split in ("train", "test"):
            found: list[str] = []
            try:
                entries = read_attngan(root, split, self.image_dir, self.image_ext, problems=found)
            except DataError as err:
                problems.append(str(err))
                continue
            problems += found
            counts = summary[split] = {"images": len(entries), "captions": sum(len(e["captions"]) for e in entries)}
            if split == "train":
                counts["held out as val"] = self.val_images
                if not 0 <= self.val_images < len(entries):
                    problems.append(f"data.val_images is {self.val_images} but the training split has {len(entries)} "
                                    "images; hold out fewer")  # fmt: skip
            for entry in entries:
                text = root / "text" / f"{entry['name']}.txt"
                lines = [(f"{text} line {k + 1}", c) for k, c in enumerate(entry["captions"])]
                edits = root / "edits" / f"{entry['name']}.txt"
                if edits.is_file():
                    targets = [line.strip() for line in edits.read_text().splitlines() if line.strip()]
                    lines += [(f"{edits} line {k + 1}", c) for k, c in enumerate(targets)]
                for where, caption in lines if wordtoix is not None else []:
                    try:
                        encode_caption(caption, wordtoix, self.max_words, where)
                    except DataError as err:
                        problems.append(str(err))
                if boxes is not None and entry["name"] not in boxes:
                    problems.append(f"{entry['path']}: no box in {root / 'CUB_200_2011' / 'bounding_boxes.txt'}")
            problems += _decode_all(entries) if decode else []
        return summary, problems

    def dataset_for(self, split: str) -> EditingImages:
        boxes = cub_boxes(Path(self.root)) if self.dataset == "cub" else None
        train = split == "train"
        return EditingImages(self.entries(split), self.train_transform if train else self.eval_transform,
                             self.wordtoix, self.max_words, train, self.seed, Path(self.root), boxes)  # fmt: skip

    def setup(self, stage: str) -> None:
        if stage == "fit":
            self.train_set = self.dataset_for("train")
        if stage in ("fit", "validate"):
            self.val_set = self.dataset_for("val")
        if stage in ("test", "predict"):
            self.test_set = self.dataset_for("test")

    def train_dataloader(self):
        return self.loader(self.train_set, train=True, drop_last=True, collate_fn=collate_editing)

    def val_dataloader(self):
        return self.loader(self.val_set, train=False, collate_fn=collate_editing)

    def test_dataloader(self):
        return self.loader(self.test_set, train=False, collate_fn=collate_editing)
