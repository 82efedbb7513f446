"""LightningModules (one per task) and the plain nn.Modules, losses and backbones they are made of.

Importing this package registers the suite's backbones in timm's registry.
"""

from lightning_modules import backbones  # noqa: F401  (registers models with timm)
