"""Readers of the two caption formats (layouts in :mod:`datamodules.captions`): the Karpathy-split JSON (retrieval) and
the AttnGAN / DF-GAN metadata layout (editing) with AttnGAN's tokenisation, vocabulary and CUB boxes."""

from __future__ import annotations

import json
import pickle
import re
from pathlib import Path

from suite_base.errors import DataError

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
