"""Image classification (supervised, fine-tuning, linear probe)."""

from lightning_modules.classification.module import ImageClassifier

__all__ = ["ImageClassifier"]
