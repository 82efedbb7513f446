"""Masked image modeling (iTPN arXiv 2211.12735, MVP arXiv 2203.05175)."""

from lightning_modules.mim.module import MaskedImageModeling, TeacherConfig

__all__ = ["MaskedImageModeling", "TeacherConfig"]
