"""Learning-by-compression (arXiv 2105.13978): rate-distortion pre-training with a factorised entropy model."""

from lightning_modules.compression.entropy import FactorizedEntropyModel, bits, bits_per_pixel
from lightning_modules.compression.model import CompressionModel
from lightning_modules.compression.module import CompressionModule

__all__ = ["CompressionModel", "CompressionModule", "FactorizedEntropyModel", "bits", "bits_per_pixel"]
