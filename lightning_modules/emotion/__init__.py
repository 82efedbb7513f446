"""TEL: temporal emotion localization over video and subtitles (arXiv 2208.01954)."""

from lightning_modules.emotion.module import TemporalEmotionLocalizer
from lightning_modules.emotion.prior import ClassFrequencyPrior
from lightning_modules.emotion.probe import LinearProbe

__all__ = ["ClassFrequencyPrior", "LinearProbe", "TemporalEmotionLocalizer"]
