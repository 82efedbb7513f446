"""ADE20K semantic segmentation (SceneParsing / ADEChallengeData2016) with mmseg's 512x512 recipe.

Layout (the official release, unchanged)::

    <root>/images/training/ADE_train_00000001.jpg        <root>/annotations/training/ADE_train_00000001.png
    <root>/images/validation/ADE_val_00000001.jpg        <root>/annotations/validation/ADE_val_00000001.png

Images and label maps are paired by file stem. A label map is an 8-bit single-channel PNG of the image's size:
0 = "other" (pixels of none of the 150 benchmark classes), ``1..150`` = the classes. Like mmseg's ADE20K config
(``LoadAnnotations(reduce_zero_label=True)``) the reader maps 0 to the ignore index 255 and every other label ``k`` to
``k - 1``, so a model predicts 150 classes ``0..149`` and the loss and mIoU skip label 255 (``ignore_index``).

Transforms follow mmseg's ``configs/_base_/datasets/ade20k.py``:

* train: ``Resize(img_scale=(2048, 512), ratio_range=(0.5, 2.0))`` (the scale times a random ratio, keeping the
  aspect ratio: the image fits inside ``long x short`` edges), ``RandomCrop(512x512, cat_max_ratio=0.75)`` (up to 10
  draws until no class covers 75 % or more of the crop's labelled pixels), ``RandomFlip(0.5)``,
  ``PhotoMetricDistortion``, ``Normalize`` (ImageNet mean / std), ``Pad(512x512, pad_val=0, seg_pad_val=255)``:
  as in mmseg the padding comes after normalisation, so padded image pixels are 0 = the mean colour, and padded mask
  pixels are ignored.
* test: ``Resize((2048, 512), keep_ratio=True)``, ``Normalize``; the whole image is returned (the model runs
  mmseg's ``mode='slide'``, crop 512, stride 341: :mod:`lightning_modules.segmentation.inference`) while the mask
  stays at the annotation's own resolution, as mmseg scores it: resize the logits to ``mask.shape[-2:]`` before the
  argmax.

With ``dataset: toy`` a toy in the same layout is written under ``root`` first (:mod:`datamodules.toy.ade_scenes`)
and read by the same code; give it a small ``crop_size`` / ``scale`` (e.g. 64x64 crops of the (256, 64) scale).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import functional as TF

from datamodules.base import SuiteDataModule, require_root
from datamodules.images import IMAGE_EXTENSIONS, collate_skipping_corrupt, load_rgb, log_skipped
from datamodules.toy.ade_scenes import ensure_toy_ade
from suite_base.errors import ConfigError, CorruptFileError, DataError

LAYOUT = (
    "<root>/images/{training,validation}/<name>.jpg and <root>/annotations/{training,validation}/<name>.png "
    "(ADEChallengeData2016; 8-bit label maps, 0 = other, 1..150 = classes)"
)
ADE20K_CLASSES = 150
IGNORE_INDEX = 255
SPLITS = ("training", "validation")
FIRST = 5  # how many file names an error quotes

Size = tuple[int, int]


def reduce_zero_label(label: np.ndarray | torch.Tensor) -> torch.Tensor:
    """mmseg's ``reduce_zero_label``: label 0 ("other") -> 255 (ignored), every other label ``k`` -> ``k - 1``.

    Returns an int64 tensor; label 255 in the input (never valid in ADE20K) stays 255, as in mmseg."""
    label = torch.as_tensor(np.asarray(label).astype(np.int64)) if isinstance(label, np.ndarray) else label.long()
    out = label - 1
    out[(label == 0) | (label == IGNORE_INDEX)] = IGNORE_INDEX
    return out


def rescale_size(width: int, height: int, scale: Size) -> Size:
    """mmcv's ``rescale_size`` with ``keep_ratio``: the ``(width, height)`` that fits the image inside ``scale =
    (long edge, short edge)``: factor ``min(long / max(w, h), short / min(w, h))``, each side rounded."""
    factor = min(max(scale) / max(width, height), min(scale) / min(width, height))
    return max(1, int(width * factor + 0.5)), max(1, int(height * factor + 0.5))


def resize_pair(image: torch.Tensor, mask: torch.Tensor | None, size: Size) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Resize ``image [3, H, W]`` (bilinear, as cv2's INTER_LINEAR: no antialiasing) and ``mask [H, W]`` (nearest)
    to ``size = (width, height)``; the image comes back as float."""
    width, height = size
    if image.shape[-2:] == (height, width):
        return image.float(), mask
    image = F.interpolate(image.float()[None], size=(height, width), mode="bilinear", align_corners=False)[0]
    if mask is not None:
        mask = F.interpolate(mask[None, None].float(), size=(height, width), mode="nearest")[0, 0].long()
    return image, mask


def choose_crop(
    mask: torch.Tensor,
    crop_size: Size,
    cat_max_ratio: float = 0.75,
    ignore_index: int = IGNORE_INDEX,
    tries: int = 10,
    generator: torch.Generator | None = None,
) -> tuple[int, int, int, int]:
    """A random ``(top, bottom, left, right)`` crop box of ``crop_size = (height, width)`` (clipped to the mask).

    mmseg's ``RandomCrop(cat_max_ratio)``: up to ``tries`` boxes are drawn; the first one holding at least two classes,
    none of which covers ``cat_max_ratio`` or more of the box's labelled (non-ignored) pixels, is kept. When no draw
    passes, the last one is used (mmseg uses one more unchecked draw: the same distribution). ``cat_max_ratio >= 1``
    disables the check.
    """
    height, width = mask.shape[-2:]
    crop_h, crop_w = crop_size
    margin_h, margin_w = max(height - crop_h, 0), max(width - crop_w, 0)
    for _ in range(max(1, tries) if cat_max_ratio < 1 else 1):
        top = int(torch.randint(margin_h + 1, (), generator=generator))
        left = int(torch.randint(margin_w + 1, (), generator=generator))
        box = (top, min(top + crop_h, height), left, min(left + crop_w, width))
        if cat_max_ratio >= 1:
            break
        crop = mask[box[0] : box[1], box[2] : box[3]]
        counts = torch.bincount(crop[crop != ignore_index].flatten())
        counts = counts[counts > 0]
        if len(counts) > 1 and counts.max() / counts.sum() < cat_max_ratio:
            break
    return box


def photometric_distortion(image: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """mmseg's ``PhotoMetricDistortion`` on a float ``[3, H, W]`` image in 0..255; each step has probability 0.5.

    Brightness: add ``U(-32, 32)``. Contrast: multiply by ``U(0.5, 1.5)``, before or after the colour steps (a coin
    decides, as in mmseg). Saturation: factor ``U(0.5, 1.5)`` (torchvision's blend with the grey image, where mmseg
    scales HSV saturation: the same effect up to rounding). Hue: shift by ``U(-18, 18)`` of OpenCV's 180 hue steps,
    i.e. a torchvision hue factor ``U(-0.1, 0.1)`` of a turn. Values are clipped to 0..255 after every step.
    """

    def coin() -> bool:
        return bool(torch.rand((), generator=generator) < 0.5)

    def uniform(low: float, high: float) -> float:
        return low + (high - low) * float(torch.rand((), generator=generator))

    def contrast(img: torch.Tensor) -> torch.Tensor:
        return (img * uniform(0.5, 1.5)).clamp(0, 255) if coin() else img

    if coin():
        image = (image + uniform(-32, 32)).clamp(0, 255)
    contrast_first = coin()
    if contrast_first:
        image = contrast(image)
    if coin():
        image = TF.adjust_saturation(image / 255, uniform(0.5, 1.5)).clamp(0, 1) * 255
    if coin():
        image = TF.adjust_hue(image / 255, uniform(-0.1, 0.1)).clamp(0, 1) * 255
    if not contrast_first:
        image = contrast(image)
    return image


class SegmentationTransform:
    """mmseg's ADE20K train or test pipeline on ``(image uint8 [3, H, W], mask int64 [H, W])`` (mask already reduced).

    Args:
        train: the random train pipeline, else the deterministic test one (see the module docstring).
        crop_size: ``(height, width)`` of the train crops and of their padding.
        scale: ``(long edge, short edge)`` the images are fitted into (mmseg's ``img_scale=(2048, 512)``).
        ratio_range: train-time factor range of ``scale``.
        cat_max_ratio: the largest share of a crop's labelled pixels one class may cover (``>= 1``: no check).
        flip_prob: horizontal flip probability.
        photometric: apply :func:`photometric_distortion`.
        mean, std: normalisation, in 0..1 units.
        ignore_index: mask value of ignored and padded pixels.
        resize_eval: resize evaluation images to ``scale`` (False: normalise only).
    Returns ``(image float [3, h, w] normalised, mask int64)``: train at ``crop_size``; test at the resized size with
    the mask untouched.
    """

    def __init__(
        self,
        train: bool,
        crop_size: Size = (512, 512),
        scale: Size = (2048, 512),
        ratio_range: tuple[float, float] = (0.5, 2.0),
        cat_max_ratio: float = 0.75,
        flip_prob: float = 0.5,
        photometric: bool = True,
        mean: tuple[float, float, float] = IMAGENET_DEFAULT_MEAN,
        std: tuple[float, float, float] = IMAGENET_DEFAULT_STD,
        ignore_index: int = IGNORE_INDEX,
        resize_eval: bool = True,
    ) -> None:
        self.train = train
        self.crop_size = (int(crop_size[0]), int(crop_size[1]))
        self.scale = (int(scale[0]), int(scale[1]))
        self.ratio_range = (float(ratio_range[0]), float(ratio_range[1]))
        self.cat_max_ratio = cat_max_ratio
        self.flip_prob = flip_prob
        self.photometric = photometric
        self.mean = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1) * 255
        self.std = torch.tensor(std, dtype=torch.float32).view(3, 1, 1) * 255
        self.ignore_index = ignore_index
        self.resize_eval = resize_eval

    def __call__(
        self, image: torch.Tensor, mask: torch.Tensor, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        height, width = image.shape[-2:]
        if not self.train:
            if self.resize_eval:
                image, _ = resize_pair(image, None, rescale_size(width, height, self.scale))
            return (image.float() - self.mean) / self.std, mask
        low, high = self.ratio_range
        ratio = low + (high - low) * float(torch.rand((), generator=generator))
        target = (int(self.scale[0] * ratio), int(self.scale[1] * ratio))
        image, mask = resize_pair(image, mask, rescale_size(width, height, target))
        top, bottom, left, right = choose_crop(
            mask, self.crop_size, self.cat_max_ratio, self.ignore_index, generator=generator
        )
        image, mask = image[:, top:bottom, left:right], mask[top:bottom, left:right]
        if float(torch.rand((), generator=generator)) < self.flip_prob:
            image, mask = image.flip(-1), mask.flip(-1)
        if self.photometric:
            image = photometric_distortion(image, generator)
        image = (image - self.mean) / self.std
        return pad_to(image, mask, self.crop_size, self.ignore_index)


def pad_to(
    image: torch.Tensor, mask: torch.Tensor, size: Size, ignore_index: int = IGNORE_INDEX
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pad ``image [3, h, w]`` with 0 and ``mask [h, w]`` with ``ignore_index`` at the bottom / right up to
    ``size = (height, width)`` (mmseg's ``Pad(size, pad_val=0, seg_pad_val=255)``)."""
    pad_h, pad_w = max(size[0] - image.shape[-2], 0), max(size[1] - image.shape[-1], 0)
    if pad_h or pad_w:
        image = F.pad(image, (0, pad_w, 0, pad_h), value=0.0)
        mask = F.pad(mask, (0, pad_w, 0, pad_h), value=ignore_index)
    return image, mask


def _files(folder: Path, extensions: tuple[str, ...]) -> dict[str, Path]:
    """``{stem: path}`` of the files in ``folder`` with one of ``extensions`` (hidden files skipped)."""
    return {
        Path(entry.name).stem: Path(entry.path)
        for entry in os.scandir(folder)
        if entry.is_file() and not entry.name.startswith(".") and entry.name.lower().endswith(extensions)
    }


def _first(names: list[str]) -> str:
    return ", ".join(names[:FIRST]) + (", ..." if len(names) > FIRST else "")


def load_label(path: Path) -> np.ndarray:
    """Decode a label PNG as an ``[H, W]`` array; an undecodable file raises :class:`CorruptFileError`, a colour or
    multi-channel one :class:`DataError`, each naming the file."""
    try:
        with Image.open(path) as img:
            mode = img.mode
            label = np.asarray(img)
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError) as err:
        raise CorruptFileError(f"{path}: cannot decode label map ({err}). Replace or delete the file.") from err
    if mode not in ("L", "P", "I", "I;16") or label.ndim != 2:
        raise DataError(
            f"{path}: label maps must be single-channel 8-bit PNGs (class index per pixel), got mode {mode}"
        )
    return label


class ADE20KSegmentation(Dataset):
    """One split of ADEChallengeData2016; items are ``{"image": float [3, H, W], "mask": int64 [h, w], "name": stem}``.

    Args:
        root: dataset root (``images/`` and ``annotations/`` inside).
        split: ``training`` or ``validation``.
        num_classes: the label maps' class count (150): values ``0..num_classes`` are valid, a larger one is a
            :class:`DataError` naming the file and the value (checked on every load; :meth:`check_labels` scans all).
        reduce_zero_label: map 0 -> 255 (ignored) and ``k`` -> ``k - 1`` (mmseg's ADE20K setting, see
            :func:`reduce_zero_label`); False keeps the raw labels (then 0 is a class of its own).
        transform: ``(image uint8 [3, H, W], mask int64 [H, W]) -> (image, mask)``, e.g. :class:`SegmentationTransform`;
            None normalises with the ImageNet mean / std only.
        on_corrupt: ``raise`` stops at an undecodable file naming it; ``skip`` returns None for it (the collate drops
            and counts it).
    Images without a label map, or label maps without an image, are a :class:`DataError` naming how many and the first
    files.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        split: str = "training",
        num_classes: int = ADE20K_CLASSES,
        reduce_zero_label: bool = True,
        transform: Callable | None = None,
        on_corrupt: Literal["raise", "skip"] = "raise",
    ) -> None:
        if on_corrupt not in ("raise", "skip"):
            raise DataError(f"data.on_corrupt must be 'raise' or 'skip', got {on_corrupt!r}")
        root = Path(root)
        images_dir, labels_dir = root / "images" / split, root / "annotations" / split
        for folder in (images_dir, labels_dir):
            if not folder.is_dir():
                raise DataError(f"{folder} does not exist. Expected layout: {LAYOUT}")
        images, labels = _files(images_dir, IMAGE_EXTENSIONS), _files(labels_dir, (".png",))
        no_label = sorted(images[stem].name for stem in images.keys() - labels.keys())
        no_image = sorted(labels[stem].name for stem in labels.keys() - images.keys())
        if no_label or no_image:
            problems = []
            if no_label:
                problems.append(f"{len(no_label)} images in {images_dir} have no label map in {labels_dir} "
                                f"(first: {_first(no_label)})")  # fmt: skip
            if no_image:
                problems.append(f"{len(no_image)} label maps in {labels_dir} have no image in {images_dir} "
                                f"(first: {_first(no_image)})")  # fmt: skip
            raise DataError(
                "; ".join(problems) + f". Images and label maps pair by file name. Expected layout: {LAYOUT}"
            )
        if not images:
            raise DataError(f"{images_dir} holds no images. Expected layout: {LAYOUT}")
        self.stems = sorted(images)
        self.images = [images[stem] for stem in self.stems]
        self.labels = [labels[stem] for stem in self.stems]
        self.num_classes = num_classes
        self.reduce_zero_label = reduce_zero_label
        self.transform = transform or SegmentationTransform(train=False, resize_eval=False)
        self.on_corrupt = on_corrupt

    def __len__(self) -> int:
        return len(self.stems)

    def label_problem(self, path: Path, label: np.ndarray) -> str | None:
        """Why ``label`` (read from ``path``) is out of range, or None."""
        top = int(label.max()) if label.size else 0
        if top > self.num_classes:
            return (f"{path}: label value {top} found, but labels must be 0..{self.num_classes} "
                    f"(0 = other, 1..{self.num_classes} = classes)")  # fmt: skip
        return None

    def load(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The raw pair: ``image uint8 [3, H, W]`` and the checked, (optionally) reduced ``mask int64 [H, W]``."""
        image = torch.from_numpy(np.asarray(load_rgb(self.images[index])).copy()).permute(2, 0, 1)
        label = load_label(self.labels[index])
        problem = self.label_problem(self.labels[index], label)
        if problem:
            raise DataError(problem)
        if tuple(label.shape) != tuple(image.shape[-2:]):
            raise DataError(f"{self.labels[index]} is {label.shape[1]}x{label.shape[0]} but its image "
                            f"{self.images[index]} is {image.shape[2]}x{image.shape[1]}")  # fmt: skip
        mask = reduce_zero_label(label) if self.reduce_zero_label else torch.from_numpy(label.astype(np.int64))
        return image, mask

    def __getitem__(self, index: int) -> dict | None:
        try:
            image, mask = self.load(index)
        except CorruptFileError as err:
            if self.on_corrupt == "raise":
                raise
            log_skipped(err)
            return None
        image, mask = self.transform(image, mask)
        return {"image": image, "mask": mask, "name": self.stems[index]}

    def label_problems(self) -> list[str]:
        """Every label map that does not decode, is not single-channel, or holds a value above ``num_classes``."""
        problems = []
        for path in self.labels:
            try:
                problem = self.label_problem(path, load_label(path))
            except DataError as err:
                problem = str(err)
            if problem:
                problems.append(problem)
        return problems

    def check_labels(self) -> int:
        """Scan every label map (see :meth:`label_problems`); raise a :class:`DataError` naming the bad ones, else
        return how many were checked."""
        problems = self.label_problems()
        if problems:
            raise DataError(
                f"{len(problems)} of {len(self.labels)} label maps are invalid: " + "; ".join(problems[:FIRST])
            )
        return len(self.labels)


def collate_segmentation(items: list[dict | None]) -> dict:
    """Stack the decodable items (``skipped`` counts the others); images of different sizes cannot be stacked,
    which only evaluation batches can hold (real ADE20K images differ in size): that is a :class:`ConfigError`."""
    kept = [item for item in items if item is not None]
    sizes = {(tuple(it["image"].shape), tuple(it["mask"].shape)) for it in kept}
    if len(sizes) > 1:
        raise ConfigError(
            f"an evaluation batch holds images of different sizes ({sorted(sizes)[:3]}); set data.eval_batch_size: 1 "
            "(mmseg evaluates ADE20K one whole image at a time)"
        )
    return collate_skipping_corrupt(items)


class ADE20KDataModule(SuiteDataModule):
    """ADE20K (ADEChallengeData2016) semantic segmentation, or its toy (same layout), with mmseg's 512x512 recipe.

    Args:
        root: the ADEChallengeData2016 folder (the toy is written there with ``dataset: toy``).
        dataset: ``ade20k`` reads ``root`` as is; ``toy`` writes :mod:`datamodules.toy.ade_scenes` there first.
        batch_size: training crops per device (mmseg's ADE20K schedules: 16 in total, e.g. 4 GPUs x 4).
        eval_batch_size: whole images per device in validation / test; 1 for ADE20K (its images differ in size),
            more works for the toy (all of one size).
        num_workers: loader workers per device.
        crop_size: ``(height, width)`` of the training crops (512, 512).
        scale: ``(long edge, short edge)`` the images are fitted into, keeping their aspect ratio (2048, 512).
        ratio_range: training rescale factor range of ``scale`` (0.5, 2.0).
        cat_max_ratio: largest share of a training crop one class may cover (0.75; 1 disables the check).
        flip_prob: horizontal flip probability.
        photometric: mmseg's photometric distortion on the training crops.
        reduce_zero_label: 0 ("other") -> ignored, ``k`` -> ``k - 1``; :attr:`num_classes` is then the label maps'
            class count (150), else one more (0 is then a class).
        on_corrupt: ``raise`` or ``skip`` undecodable files.
        pin_memory, persistent_workers, seed: loader settings (``seed`` also seeds the toy).
        mean, std: normalisation (ImageNet's, as mmseg's ADE20K config).
        toy_train, toy_val: toy images per split.
        toy_img_size: toy image height (the width is 4/3 of it).
        toy_num_classes: toy classes (4..18; labels ``1..toy_num_classes`` plus 0 = unlabelled).
    The ``test`` stage evaluates on ``validation`` (ADE20K's test labels are not public; mmseg does the same).
    """

    def __init__(
        self,
        root: str = "data/ade/ADEChallengeData2016",
        dataset: Literal["ade20k", "toy"] = "ade20k",
        batch_size: int = 4,
        eval_batch_size: int = 1,
        num_workers: int = 4,
        crop_size: tuple[int, int] = (512, 512),
        scale: tuple[int, int] = (2048, 512),
        ratio_range: tuple[float, float] = (0.5, 2.0),
        cat_max_ratio: float = 0.75,
        flip_prob: float = 0.5,
        photometric: bool = True,
        reduce_zero_label: bool = True,
        on_corrupt: Literal["raise", "skip"] = "raise",
        pin_memory: bool = True,
        persistent_workers: bool = True,
        seed: int = 0,
        mean: tuple[float, float, float] = IMAGENET_DEFAULT_MEAN,
        std: tuple[float, float, float] = IMAGENET_DEFAULT_STD,
        toy_train: int = 200,
        toy_val: int = 50,
        toy_img_size: int = 64,
        toy_num_classes: int = 8,
    ) -> None:
        super().__init__(root, dataset, batch_size, num_workers, pin_memory, persistent_workers, on_corrupt, seed)
        if dataset not in ("ade20k", "toy"):
            raise ConfigError(f"data.init_args.dataset must be ade20k or toy, got {dataset!r}")
        if len(crop_size) != 2 or min(crop_size) < 1 or len(scale) != 2 or min(scale) < 1:
            raise ConfigError(f"data.init_args.crop_size {crop_size} and scale {scale} must be two positive sizes")
        if not 0 < ratio_range[0] <= ratio_range[1]:
            raise ConfigError(f"data.init_args.ratio_range must be 0 < low <= high, got {ratio_range}")
        if not 0 < cat_max_ratio <= 1:
            raise ConfigError(f"data.init_args.cat_max_ratio must be in (0, 1], got {cat_max_ratio}")
        self.eval_batch_size = eval_batch_size
        self.crop_size = (int(crop_size[0]), int(crop_size[1]))
        self.reduce_zero_label = reduce_zero_label
        self.toy_options = dict(train=toy_train, val=toy_val, img_size=toy_img_size, num_classes=toy_num_classes,
                                seed=seed)  # fmt: skip
        common = dict(crop_size=self.crop_size, scale=tuple(scale), mean=tuple(mean), std=tuple(std))
        self.train_transform = SegmentationTransform(
            train=True, ratio_range=tuple(ratio_range), cat_max_ratio=cat_max_ratio, flip_prob=flip_prob,
            photometric=photometric, **common,
        )  # fmt: skip
        self.eval_transform = SegmentationTransform(train=False, **common)
        if dataset == "ade20k":
            self.check_layout()

    @property
    def label_classes(self) -> int:
        """Classes of the label maps (values ``1..label_classes``; 0 = other)."""
        return ADE20K_CLASSES if self.dataset == "ade20k" else self.toy_options["num_classes"]

    @property
    def num_classes(self) -> int:
        """Classes the model predicts: 150 for ADE20K (the toy's count for the toy); one more without
        ``reduce_zero_label``."""
        return self.label_classes if self.reduce_zero_label else self.label_classes + 1

    @property
    def ignore_index(self) -> int:
        return IGNORE_INDEX

    def check_layout(self) -> None:
        """Cheap checks before a long job: the root and its four split folders exist."""
        root = require_root(self.root, LAYOUT, "your copy (ADEChallengeData2016 unzipped)")
        for kind in ("images", "annotations"):
            for split in SPLITS:
                if not (root / kind / split).is_dir():
                    raise DataError(f"data.root '{root}' has no '{kind}/{split}/' folder. Expected layout: {LAYOUT}")

    def prepare_data(self) -> None:
        if self.dataset == "toy":
            ensure_toy_ade(self.root, **self.toy_options)

    def dataset_for(self, split: str, train: bool) -> ADE20KSegmentation:
        return ADE20KSegmentation(
            self.root,
            split,
            num_classes=self.label_classes,
            reduce_zero_label=self.reduce_zero_label,
            transform=self.train_transform if train else self.eval_transform,
            on_corrupt=self.on_corrupt,
        )

    def setup(self, stage: str) -> None:
        if self.dataset == "toy":
            # the generator ran in prepare_data; a process that skipped it (non-zero local rank) checks here
            self.check_layout()
        if stage == "fit":
            self.train_set = self.dataset_for("training", train=True)
        if stage in ("fit", "validate"):
            self.val_set = self.dataset_for("validation", train=False)
        if stage in ("test", "predict"):
            self.test_set = self.dataset_for("validation", train=False)

    def _eval_loader(self, dataset: Dataset) -> DataLoader:
        """Whole images, ``eval_batch_size`` at a time, in order."""
        return DataLoader(
            dataset,
            batch_size=self.eval_batch_size,
            shuffle=False,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            persistent_workers=self.persistent_workers and self.num_workers > 0,
            collate_fn=collate_segmentation,
        )

    def train_dataloader(self):
        return self.loader(self.train_set, train=True, drop_last=True)

    def val_dataloader(self):
        return self._eval_loader(self.val_set)

    def test_dataloader(self):
        return self._eval_loader(self.test_set)

    def predict_dataloader(self):
        return self._eval_loader(self.test_set)

    def synthetic_batch(self, batch_size: int) -> dict:
        """A random training batch of this data's shapes (for benchmarks that leave data loading out)."""
        height, width = self.crop_size
        mask = torch.randint(0, self.num_classes, (batch_size, height, width))
        mask[:, : height // 8] = IGNORE_INDEX  # some ignored pixels, like ADE20K's "other"
        return {"image": torch.randn(batch_size, 3, height, width), "mask": mask}

    def check_dataset(self, decode: bool = True) -> tuple[dict, list[str]]:
        """Validate the tree without training: per-split image counts, and every problem (missing folders, images
        and label maps that do not pair, label maps that are not single-channel or hold values above the class
        count, images that do not decode), each naming its path. Returns (summary, problems)."""
        summary, problems = {}, []
        try:
            self.check_layout()
        except DataError as err:
            return summary, [str(err)]
        for split in SPLITS:
            try:
                dataset = ADE20KSegmentation(self.root, split, num_classes=self.label_classes)
            except DataError as err:
                problems.append(str(err))
                continue
            summary[split] = {"images": len(dataset)}
            problems += dataset.label_problems()
            if decode:
                for path in dataset.images:
                    try:
                        load_rgb(path)
                    except DataError as err:
                        problems.append(str(err).split(". Replace")[0])
        return summary, problems
