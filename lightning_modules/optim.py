"""The one optimizer / learning-rate schedule helper every task uses.

* Optimizers come from timm's factory (``create_optimizer_v2``): ``adamw``, ``sgd``, ``lars``, ``lamb`` ...
* Parameter groups: no weight decay on 1-D parameters (norm weights, biases) and on names matching
  ``no_weight_decay`` (position embeddings, class/mask tokens by default); optional layer-wise lr decay
  (BEiT/MAE style, ``lr_scale = layer_decay ** (num_layers - layer_id)``) through timm's ``group_matcher``.
* Learning rate is scaled explicitly by the global batch: ``lr = base_lr * global_batch / base_batch_size``
  (the DeiT recipe uses ``base_batch_size=512``; MAE/BEiT use 256).
* Schedule (``schedule``), updated every optimizer step and honouring each group's ``lr_scale``, all timm
  schedulers with ``t_in_epochs=False``:

  - ``cosine``: linear warm-up from ``warmup_lr``, then cosine to ``min_lr`` over the remaining steps
    (``CosineLRScheduler``; classification and pre-training recipes);
  - ``step``: linear warm-up, then the lr times ``decay_rate`` at each of ``decay_epochs`` (mmdet's ``step``
    policy: COCO 1x = 12 epochs, mmdet's default steps at epochs 8 and 11, iTPN's configs 9 and 11; 3x = 36 with
    27 and 33; ``MultiStepLRScheduler``);
    the milestones count from step 0, warm-up included, as mmdet's do;
  - ``poly``: linear warm-up, then ``(1 - t / T) ** poly_power`` decay to ``min_lr`` over the whole run (mmseg's
    ``poly`` policy, power 1.0, for the 160k-iteration ADE20K schedule; ``PolyLRScheduler``). mmseg multiplies the
    warm-up factor into the poly curve; here the warm-up ramps linearly to the poly curve's value.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

from timm.models import group_parameters
from timm.optim import create_optimizer_v2, param_groups_layer_decay, param_groups_weight_decay
from timm.scheduler import CosineLRScheduler, MultiStepLRScheduler, PolyLRScheduler
from torch import nn

from suite_base.errors import ConfigError

DEFAULT_NO_WEIGHT_DECAY = ["*pos_embed*", "*cls_token*", "*mask_token*", "*relative_position_bias_table*"]


@dataclass
class OptimConfig:
    """Optimizer and schedule of one experiment (``model.init_args.optim`` in a config).

    Args:
        name: timm optimizer name (``adamw``, ``sgd``, ``lars``, ``lamb`` ...).
        base_lr: learning rate at ``base_batch_size``; the run uses ``base_lr * global_batch / base_batch_size``.
        base_batch_size: batch size at which ``base_lr`` was quoted.
        weight_decay: decoupled (AdamW) or L2 (SGD) weight decay of the decayed group.
        momentum: SGD/LARS momentum.
        betas: Adam betas; ``None`` keeps timm's default (0.9, 0.999).
        eps: Adam epsilon.
        layer_decay: layer-wise lr decay factor (``None`` or 1.0 to disable); needs a model with ``group_matcher``.
        layer_decay_reference: rescale the factor to ``layer_decay ** (reference / num_layers)`` so that the decay
            across the whole network equals that of a ``reference``-layer model (iTPN's ``lr_decay.py``: 13, i.e.
            a 12-block ViT; ``num_layers`` counts the embedding layer and every block). None keeps the factor.
        no_weight_decay: fnmatch patterns of parameter names that get no weight decay (besides all 1-D params).
        warmup_epochs: linear warm-up length in epochs (converted to optimizer steps).
        warmup_steps: warm-up length in optimizer steps; overrides ``warmup_epochs`` when set.
        warmup_lr: learning rate at step 0.
        min_lr: final learning rate of the cosine or poly decay.
        schedule: ``cosine``, ``step`` or ``poly`` (module docstring).
        decay_epochs: ``step`` milestones in epochs (fractions allowed; converted to optimizer steps).
        decay_steps: ``step`` milestones in optimizer steps; overrides ``decay_epochs`` (runs set by max_steps).
        decay_rate: factor applied at each ``step`` milestone (mmdet 0.1).
        poly_power: exponent of the ``poly`` decay (mmseg 1.0).
    """

    name: str = "adamw"
    base_lr: float = 5e-4
    base_batch_size: int = 256
    weight_decay: float = 0.05
    momentum: float = 0.9
    betas: tuple[float, float] | None = None
    eps: float = 1e-8
    layer_decay: float | None = None
    layer_decay_reference: int | None = None
    no_weight_decay: list[str] = field(default_factory=lambda: list(DEFAULT_NO_WEIGHT_DECAY))
    warmup_epochs: float = 5.0
    warmup_steps: int | None = None
    warmup_lr: float = 1e-6
    min_lr: float = 1e-5
    schedule: Literal["cosine", "step", "poly"] = "cosine"
    decay_epochs: list[float] = field(default_factory=list)
    decay_steps: list[int] | None = None
    decay_rate: float = 0.1
    poly_power: float = 1.0


def scaled_lr(cfg: OptimConfig, global_batch: int) -> float:
    """``base_lr * global_batch / base_batch_size`` (the linear scaling rule, made explicit)."""
    if global_batch <= 0 or cfg.base_batch_size <= 0:
        raise ConfigError(
            f"global batch ({global_batch}) and optim.base_batch_size ({cfg.base_batch_size}) must be > 0"
        )
    return cfg.base_lr * global_batch / cfg.base_batch_size


def param_groups(model: nn.Module, cfg: OptimConfig) -> list[dict]:
    """Split ``model``'s trainable parameters into weight-decay / no-weight-decay (and layer-scale) groups."""
    names = list(cfg.no_weight_decay)
    if hasattr(model, "no_weight_decay"):
        names += [f"{n}*" for n in model.no_weight_decay()]
    if cfg.layer_decay is not None and cfg.layer_decay != 1.0:
        if not hasattr(model, "group_matcher"):
            raise ConfigError(
                f"optim.layer_decay={cfg.layer_decay} needs a backbone with timm's group_matcher(); "
                f"{type(model).__name__} has none. Set optim.layer_decay: null."
            )
        decay = cfg.layer_decay
        if cfg.layer_decay_reference is not None:
            # timm numbers the groups 0 (embedding) .. num_layers (head); iTPN's num_layers excludes the head group
            num_layers = max(group_parameters(model, model.group_matcher(coarse=False), reverse=True).values())
            decay = decay ** (cfg.layer_decay_reference / num_layers)
        return param_groups_layer_decay(
            model, weight_decay=cfg.weight_decay, no_weight_decay_list=names, layer_decay=decay
        )
    return param_groups_weight_decay(model, weight_decay=cfg.weight_decay, no_weight_decay_list=names)


def build_optimizer(model: nn.Module, cfg: OptimConfig, global_batch: int):
    """timm optimizer over :func:`param_groups` at the batch-scaled learning rate."""
    lr = scaled_lr(cfg, global_batch)
    kwargs = {"eps": cfg.eps} if cfg.name.lower() in {"adamw", "adam", "lamb", "nadamw", "adan"} else {}
    if cfg.betas is not None:
        kwargs["betas"] = tuple(cfg.betas)
    return create_optimizer_v2(
        param_groups(model, cfg),
        opt=cfg.name,
        lr=lr,
        weight_decay=cfg.weight_decay,
        momentum=cfg.momentum,
        **kwargs,
    )


def warmup_steps(cfg: OptimConfig, total_steps: int, max_epochs: int | None) -> int:
    """Warm-up length in optimizer steps (explicit ``warmup_steps`` or ``warmup_epochs`` of the run's steps)."""
    if cfg.warmup_steps is not None:
        return int(cfg.warmup_steps)
    if not max_epochs or max_epochs <= 0:
        if cfg.warmup_epochs:
            raise ConfigError("optim.warmup_epochs needs trainer.max_epochs; with max_steps set optim.warmup_steps")
        return 0
    return int(math.floor(cfg.warmup_epochs * total_steps / max_epochs))


def decay_milestones(cfg: OptimConfig, total_steps: int, max_epochs: int | None) -> list[int]:
    """``step`` milestones in optimizer steps: ``decay_steps`` as given, or ``decay_epochs`` x steps per epoch."""
    if cfg.decay_steps is not None:
        steps = [int(s) for s in cfg.decay_steps]
    else:
        if not cfg.decay_epochs:
            raise ConfigError("optim.schedule=step needs optim.decay_epochs (e.g. [8, 11] for COCO 1x) or decay_steps")
        if not max_epochs or max_epochs <= 0:
            raise ConfigError("optim.decay_epochs needs trainer.max_epochs; with max_steps set optim.decay_steps")
        steps = [int(round(e * total_steps / max_epochs)) for e in cfg.decay_epochs]
    if steps != sorted(steps) or any(s <= 0 or s >= total_steps for s in steps):
        raise ConfigError(
            f"optim step milestones {steps} (optimizer steps) must increase and lie inside the run's {total_steps} "
            "steps; check optim.decay_epochs / decay_steps against trainer.max_epochs / max_steps"
        )
    return steps


def build_scheduler(optimizer, cfg: OptimConfig, total_steps: int, max_epochs: int | None):
    """The ``schedule``'s timm scheduler (warm-up then cosine, step or poly decay), counted in optimizer steps."""
    warm = warmup_steps(cfg, total_steps, max_epochs)
    if total_steps <= warm:
        raise ConfigError(f"the run has {total_steps} optimizer steps but warm-up takes {warm}; shorten the warm-up")
    common = dict(warmup_t=warm, warmup_lr_init=cfg.warmup_lr, t_in_epochs=False)
    if cfg.schedule == "cosine":
        return CosineLRScheduler(optimizer, t_initial=total_steps - warm, lr_min=cfg.min_lr, warmup_prefix=True,
                                 **common)  # fmt: skip
    if cfg.schedule == "step":
        milestones = decay_milestones(cfg, total_steps, max_epochs)
        # timm applies milestone m from t = m - 1 on (its historical convention); +1 makes step m the first decayed
        decay_t = [m + 1 for m in milestones]
        return MultiStepLRScheduler(optimizer, decay_t=decay_t, decay_rate=cfg.decay_rate, warmup_prefix=False,
                                    **common)  # fmt: skip
    if cfg.schedule == "poly":
        return PolyLRScheduler(optimizer, t_initial=total_steps, power=cfg.poly_power, lr_min=cfg.min_lr,
                               warmup_prefix=False, **common)  # fmt: skip
    raise ConfigError(f"optim.schedule must be cosine, step or poly, got {cfg.schedule!r}")


def nested_layer_matcher(
    backbone: nn.Module, prefix: str, heads_above: bool, what: str = "the backbone"
) -> Callable[[str], int]:
    """Layer ids for layer-wise lr decay of a task model whose backbone sits under ``prefix`` (``backbone.``,
    ``detector.backbone.body.``): the backbone's own ``group_matcher`` layers, every other parameter (heads, necks)
    at the top layer, i.e. the full learning rate (BEiT / mmdet / mmseg ``LayerDecayOptimizerConstructor``).

    ``heads_above``: the heads get a layer of their own one above the backbone's last group; False puts them in
    that last group (iTPN: HiViT's matcher already puts its pyramid and norms there, above the last block).
    """
    if not hasattr(backbone, "group_matcher"):
        raise ConfigError(
            f"optim.layer_decay needs a backbone with timm's group_matcher(); {what} ({type(backbone).__name__}) "
            "has none. Set model.init_args.optim.layer_decay: null."
        )
    layers = group_parameters(backbone, backbone.group_matcher(coarse=False), reverse=True)
    top = max(layers.values()) + (1 if heads_above else 0)

    def layer_id(name: str) -> int:
        if name.startswith(prefix):
            return min(layers.get(name[len(prefix) :], top), top)
        return top

    return layer_id
