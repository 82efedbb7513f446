"""Representation evaluations shared by every pre-training method (MIM, E-DIY / BYOL, compression): frozen-feature
linear probe (:mod:`lightning_modules.classification.probe`), weighted k-NN (:mod:`.knn`) and per-region dense
classification (:mod:`.dense`). ``python -m experiments evaluate`` (:mod:`experiments.evaluate`) runs them."""

from lightning_modules.evaluation.dense import (
    DenseResult,
    cell_class_fractions,
    cell_labels,
    dense_evaluation,
    dense_probe,
    extract_dense_features,
    feature_map,
)
from lightning_modules.evaluation.knn import knn_accuracy, knn_predict, knn_votes

__all__ = [
    "DenseResult",
    "cell_class_fractions",
    "cell_labels",
    "dense_evaluation",
    "dense_probe",
    "extract_dense_features",
    "feature_map",
    "knn_accuracy",
    "knn_predict",
    "knn_votes",
]
