"""Video person re-ID: STT, the Spatiotemporal Transformer with a Global Transformer (arXiv 2103.16469)."""

from lightning_modules.reid.module import STTModule
from lightning_modules.reid.stt import SpatioTemporalTransformer

__all__ = ["STTModule", "SpatioTemporalTransformer"]
