"""Self-supervised pre-training: BYOL (arXiv 2006.07733) and E-DIY (arXiv 2106.00537)."""

from lightning_modules.ssl.module import BYOLModule, EDIYModule

__all__ = ["BYOLModule", "EDIYModule"]
