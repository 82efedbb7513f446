"""Linear probing of a frozen backbone, solved directly instead of by SGD epochs.

The features of a frozen encoder are extracted once (``forward_features`` -> ``forward_head(pre_logits=True)``, the
representation a timm classifier would see), standardised with the training set's statistics (what MAE's
BatchNorm-without-affine probe does, He et al. 2022 Appendix A.2) and a multinomial logistic regression with a small
L2 penalty is fitted to convergence with L-BFGS. This is the cheap, deterministic way to compare representations
(pre-trained vs random init, recipe vs recipe); ``ImageClassifier(linear_probe=True)`` is the epoch-based,
augmentation-using version of the same protocol for full-scale runs.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader


@torch.no_grad()
def extract_features(backbone: nn.Module, loader: DataLoader, device: str | torch.device = "cpu"):
    """``(features [N, D], targets [N])`` of a frozen timm backbone over ``loader`` (batches with image/target)."""
    was_training = backbone.training
    backbone.eval().to(device)
    feats, targets = [], []
    for batch in loader:
        x = batch["image"].to(device)
        feats.append(backbone.forward_head(backbone.forward_features(x), pre_logits=True).float().cpu())
        targets.append(batch["target"])
    backbone.train(was_training)
    return torch.cat(feats), torch.cat(targets)


@dataclass
class ProbeResult:
    train_accuracy: float
    test_accuracy: float
    test_logits: torch.Tensor | None = None  # [N_test, num_classes], with ``return_logits=True``


def fit_linear_probe(
    train_x: torch.Tensor,
    train_y: torch.Tensor,
    test_x: torch.Tensor,
    test_y: torch.Tensor,
    weight_decay: float = 1e-4,
    max_iter: int = 300,
    return_logits: bool = False,
) -> ProbeResult:
    """Multinomial logistic regression on standardised features (L-BFGS); accuracies on both sets (and the test
    logits with ``return_logits``)."""
    mean, std = train_x.mean(0), train_x.std(0) + 1e-6
    train_x, test_x = (train_x - mean) / std, (test_x - mean) / std
    num_classes = int(max(train_y.max(), test_y.max())) + 1
    weight = torch.zeros(train_x.shape[1], num_classes, requires_grad=True)
    bias = torch.zeros(num_classes, requires_grad=True)
    opt = torch.optim.LBFGS([weight, bias], max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(train_x @ weight + bias, train_y) + weight_decay * weight.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        train_acc = ((train_x @ weight + bias).argmax(1) == train_y).float().mean().item()
        test_logits = test_x @ weight + bias
        test_acc = (test_logits.argmax(1) == test_y).float().mean().item()
    return ProbeResult(train_acc, test_acc, test_logits if return_logits else None)


def linear_probe(
    backbone: nn.Module, train_loader: DataLoader, test_loader: DataLoader, device: str | torch.device = "cpu"
) -> ProbeResult:
    """Extract features of both sets with the frozen ``backbone`` and fit :func:`fit_linear_probe`."""
    return fit_linear_probe(
        *extract_features(backbone, train_loader, device), *extract_features(backbone, test_loader, device)
    )
