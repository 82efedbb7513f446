"""Few-shot learning: COSOC (Exemplar pre-training, COS, fusion-sampled cosine classifier, SOC) and baselines."""

from lightning_modules.fewshot.cos import COSModule
from lightning_modules.fewshot.exemplar import ExemplarMoCo
from lightning_modules.fewshot.module import CosineClassifierModule, FewShotModule, ProtoNetModule

__all__ = ["COSModule", "CosineClassifierModule", "ExemplarMoCo", "FewShotModule", "ProtoNetModule"]
