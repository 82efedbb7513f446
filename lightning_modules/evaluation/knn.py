"""Weighted k-nearest-neighbour classification on frozen features (InstDisc, Wu et al. 2018; DINO's ``eval_knn``).

Features are L2-normalised; each test sample takes its ``k`` (20) training neighbours by cosine similarity, each
neighbour votes for its class with weight ``exp(similarity / T)`` (T = 0.07) and the class with the largest summed
vote wins. Test samples are processed in chunks so the ``[chunk, N_train]`` similarity matrix stays small.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


@torch.no_grad()
def knn_votes(
    train_features: torch.Tensor,
    train_labels: torch.Tensor,
    test_features: torch.Tensor,
    num_classes: int | None = None,
    k: int = 20,
    temperature: float = 0.07,
    chunk_size: int = 1024,
) -> torch.Tensor:
    """``[N_test, num_classes]`` summed vote weights ``sum_{j in topk} exp(cos(x, x_j) / T) [y_j = c]``."""
    if train_features.shape[0] != train_labels.shape[0]:
        raise ValueError(f"{train_features.shape[0]} training features but {train_labels.shape[0]} labels")
    if num_classes is None:
        num_classes = int(train_labels.max()) + 1
    k = min(k, train_features.shape[0])
    train = F.normalize(train_features.float(), dim=1)
    test = F.normalize(test_features.float(), dim=1)
    labels = train_labels.long().to(train.device)
    votes = []
    for start in range(0, test.shape[0], chunk_size):
        sim = test[start : start + chunk_size] @ train.T  # [chunk, N_train]
        top_sim, top_idx = sim.topk(k, dim=1)
        weights = (top_sim / temperature).exp()
        chunk_votes = torch.zeros(sim.shape[0], num_classes, device=sim.device)
        votes.append(chunk_votes.scatter_add_(1, labels[top_idx], weights))
    return torch.cat(votes) if votes else torch.zeros(0, num_classes)


def knn_predict(
    train_features: torch.Tensor,
    train_labels: torch.Tensor,
    test_features: torch.Tensor,
    num_classes: int | None = None,
    k: int = 20,
    temperature: float = 0.07,
    chunk_size: int = 1024,
) -> torch.Tensor:
    """``[N_test]`` predicted classes (the largest summed vote; ties go to the lower class index)."""
    return knn_votes(train_features, train_labels, test_features, num_classes, k, temperature, chunk_size).argmax(1)


def knn_accuracy(
    train_features: torch.Tensor,
    train_labels: torch.Tensor,
    test_features: torch.Tensor,
    test_labels: torch.Tensor,
    k: int = 20,
    temperature: float = 0.07,
    chunk_size: int = 1024,
) -> float:
    """Top-1 accuracy of :func:`knn_predict` on ``(test_features, test_labels)``."""
    num_classes = int(max(train_labels.max(), test_labels.max())) + 1
    pred = knn_predict(train_features, train_labels, test_features, num_classes, k, temperature, chunk_size)
    return (pred.cpu() == test_labels.cpu()).float().mean().item()
