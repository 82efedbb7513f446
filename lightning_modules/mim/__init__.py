"""Masked image modeling (iTPN arXiv 2211.12735, MVP arXiv 2203.05175)."""

from lightning_modules.mim.encoders import mim_encoder
from lightning_modules.mim.module import MaskedImageModeling
from lightning_modules.mim.teacher import ClipTeacher

__all__ = ["ClipTeacher", "MaskedImageModeling", "mim_encoder"]
