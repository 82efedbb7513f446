"""Dense evaluation from frozen features: per-region (per feature-map cell) classification.

The frozen backbone's feature map (``forward_features`` -> ``[B, C, h, w]``; a ViT's patch tokens are laid back onto
their grid) gives one feature per cell. A cell's label is the majority class of the pixels it covers (background
included, ties to the lower class). A linear classifier is fitted on the training cells with
:func:`~lightning_modules.classification.probe.fit_linear_probe`, and on the validation cells we report:

* ``cell_accuracy``: the fraction of cells whose predicted class is their label;
* ``miou``: the mean over classes (background included; classes absent from both prediction and label skipped) of
  the cell-level intersection over union (torchmetrics' ``MulticlassJaccardIndex``);
* ``pointing``: the pointing game (Zhang et al. 2016) at cell resolution: for every image and every object class
  present in it, whether the cell with the highest predicted probability of that class covers any of its pixels.

A representation that keeps "what is where" scores well above one that does not (random init), which is what the
region-level claims of the suite's pre-training methods need checked.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader
from torchmetrics.functional.classification import multiclass_jaccard_index

from lightning_modules.classification.probe import fit_linear_probe


def feature_map(backbone: nn.Module, x: torch.Tensor, feature_index: int | None = None) -> torch.Tensor:
    """``[B, C, h, w]``: ``forward_features`` (or ``forward_intermediates`` level ``feature_index``) of ``x``."""
    if feature_index is None:
        out = backbone.forward_features(x)
    else:
        out = backbone.forward_intermediates(x, indices=[feature_index], intermediates_only=True)[0]
    if out.ndim == 3:  # tokens [B, N, D]: drop class / register tokens, lay the patches on their square grid
        out = out[:, getattr(backbone, "num_prefix_tokens", 0) :]
        side = int(round(out.shape[1] ** 0.5))
        if side * side != out.shape[1]:
            raise ValueError(f"cannot lay {out.shape[1]} tokens of {type(backbone).__name__} on a square grid")
        out = out.transpose(1, 2).reshape(out.shape[0], out.shape[2], side, side)
    elif out.ndim == 4 and getattr(backbone, "output_fmt", "NCHW") == "NHWC":
        out = out.permute(0, 3, 1, 2)
    if out.ndim != 4:
        raise ValueError(f"{type(backbone).__name__} gives features of shape {tuple(out.shape)}, not [B, C, h, w]")
    return out


def cell_class_fractions(masks: torch.Tensor, grid: tuple[int, int], num_classes: int) -> torch.Tensor:
    """``[N, num_classes + 1, h, w]``: the fraction of each cell's pixels in each class (0 = background).

    ``masks``: ``[N, H, W]`` label maps with values in ``0..num_classes``; cells split the map evenly (adaptive
    average pooling, so H need not be a multiple of h).
    """
    one_hot = F.one_hot(masks.long(), num_classes + 1).permute(0, 3, 1, 2).float()
    return F.adaptive_avg_pool2d(one_hot, grid)


def cell_labels(masks: torch.Tensor, grid: tuple[int, int], num_classes: int) -> torch.Tensor:
    """``[N, h, w]``: the majority class of the pixels each cell covers (ties go to the lower class)."""
    return cell_class_fractions(masks, grid, num_classes).argmax(1)


@torch.no_grad()
def extract_dense_features(
    backbone: nn.Module, loader: DataLoader, device: str | torch.device = "cpu", feature_index: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(features [N, C, h, w], masks [N, H, W])`` of a frozen backbone over ``loader`` (batches image/mask)."""
    was_training = backbone.training
    backbone.eval().to(device)
    feats, masks = [], []
    for batch in loader:
        feats.append(feature_map(backbone, batch["image"].to(device), feature_index).float().cpu())
        masks.append(batch["mask"])
    backbone.train(was_training)
    return torch.cat(feats), torch.cat(masks)


@dataclass
class DenseResult:
    cell_accuracy: float
    miou: float
    pointing: float
    train_cell_accuracy: float
    grid: tuple[int, int]


def _cells(features: torch.Tensor) -> torch.Tensor:
    return features.permute(0, 2, 3, 1).reshape(-1, features.shape[1])


def dense_probe(
    train_features: torch.Tensor,
    train_masks: torch.Tensor,
    val_features: torch.Tensor,
    val_masks: torch.Tensor,
    num_classes: int,
    weight_decay: float = 1e-4,
    max_iter: int = 300,
) -> DenseResult:
    """Fit a linear per-cell classifier on the training cells; cell accuracy, mIoU and pointing on the val cells.

    ``*_features``: ``[N, C, h, w]`` feature maps; ``*_masks``: ``[N, H, W]`` label maps (0 = background,
    ``1..num_classes`` objects).
    """
    grid = tuple(train_features.shape[-2:])
    if tuple(val_features.shape[-2:]) != grid:
        raise ValueError(f"train feature grid {grid} differs from val grid {tuple(val_features.shape[-2:])}")
    train_y = cell_labels(train_masks, grid, num_classes).reshape(-1)
    val_fractions = cell_class_fractions(val_masks, grid, num_classes)  # [N, K, h, w], K = num_classes + 1
    val_y = val_fractions.argmax(1).reshape(-1)
    result = fit_linear_probe(
        _cells(train_features),
        train_y,
        _cells(val_features),
        val_y,
        weight_decay=weight_decay,
        max_iter=max_iter,
        return_logits=True,
    )
    logits = result.test_logits
    classes = num_classes + 1
    if logits.shape[1] < classes:  # classes absent from both splits (above the largest label) are never predicted
        logits = torch.cat([logits, logits.new_full((logits.shape[0], classes - logits.shape[1]), -torch.inf)], 1)
    pred = logits.argmax(1)
    miou = multiclass_jaccard_index(pred, val_y, num_classes=classes, average="macro").item()
    # pointing game: the most confident cell of each present object class must cover part of that object
    n = val_masks.shape[0]
    probs = logits.softmax(1).reshape(n, -1, classes)  # [N, h*w, K]
    fractions = val_fractions.reshape(n, classes, -1)  # [N, K, h*w]
    best = probs.argmax(1)  # [N, K]
    hit = fractions.gather(2, best.unsqueeze(2)).squeeze(2) > 0  # [N, K]
    present = fractions.sum(2) > 0
    present[:, 0] = False  # objects only
    pointing = (hit & present).sum().item() / max(int(present.sum()), 1)
    return DenseResult(result.test_accuracy, miou, pointing, result.train_accuracy, grid)


def dense_evaluation(
    backbone: nn.Module,
    train_loader: DataLoader,
    val_loader: DataLoader,
    num_classes: int,
    device: str | torch.device = "cpu",
    feature_index: int | None = None,
    weight_decay: float = 1e-4,
    max_iter: int = 300,
) -> DenseResult:
    """Extract the frozen ``backbone``'s feature maps on both loaders and run :func:`dense_probe`."""
    train = extract_dense_features(backbone, train_loader, device, feature_index)
    val = extract_dense_features(backbone, val_loader, device, feature_index)
    return dense_probe(*train, *val, num_classes=num_classes, weight_decay=weight_decay, max_iter=max_iter)
