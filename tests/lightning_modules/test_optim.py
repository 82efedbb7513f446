"""The shared optimizer helper: weight-decay groups, layer decay, lr scaling and the warm-up + cosine schedule."""

import math

import pytest
import timm
import torch

import lightning_modules  # noqa: F401
from experiments.errors import ConfigError
from lightning_modules.optim import OptimConfig, build_optimizer, build_scheduler, param_groups, scaled_lr


def group_of(optimizer, param):
    return next(g for g in optimizer.param_groups if any(p is param for p in g["params"]))


def test_no_weight_decay_on_norms_biases_and_position_embeddings():
    model = timm.create_model("visformer_tiny", num_classes=10)
    opt = build_optimizer(model, OptimConfig(weight_decay=0.05), global_batch=256)
    assert group_of(opt, model.stem[1].weight)["weight_decay"] == 0.0  # BatchNorm weight
    assert group_of(opt, model.patch_embed1.proj.bias)["weight_decay"] == 0.0  # bias
    assert group_of(opt, model.head.bias)["weight_decay"] == 0.0
    assert group_of(opt, model.pos_embed1)["weight_decay"] == 0.0  # default no_weight_decay patterns
    assert group_of(opt, model.stage2[0].attn.qkv.weight)["weight_decay"] == 0.05
    assert group_of(opt, model.head.weight)["weight_decay"] == 0.05
    # the official Visformer recipe (no_weight_decay: []) decays position embeddings like any weight
    opt = build_optimizer(model, OptimConfig(weight_decay=0.05, no_weight_decay=[]), global_batch=256)
    assert group_of(opt, model.pos_embed1)["weight_decay"] == 0.05
    assert group_of(opt, model.stem[1].weight)["weight_decay"] == 0.0


def test_every_trainable_parameter_is_optimised_once():
    model = timm.create_model("visformer_tiny", num_classes=10)
    groups = param_groups(model, OptimConfig(layer_decay=0.75))
    ids = [id(p) for g in groups for p in g["params"]]
    assert len(ids) == len(set(ids)) == len(list(model.parameters()))


def test_layer_decay_scales_lr_by_depth():
    model = timm.create_model("visformer_tiny", num_classes=10)
    cfg = OptimConfig(layer_decay=0.5, base_lr=1e-3, base_batch_size=256, warmup_steps=0)
    opt = build_optimizer(model, cfg, global_batch=256)
    scale = {name: group_of(opt, p)["lr_scale"] for name, p in model.named_parameters()}
    # timm's group_matcher for Visformer: stem = layer 0, then one layer per block, norm/head last
    n_layers = max(scale.values()) and round(math.log(min(scale.values()), 0.5))
    assert scale["head.weight"] == 1.0
    assert scale["stem.0.weight"] == pytest.approx(0.5**n_layers)
    assert scale["stage1.0.mlp.conv1.weight"] == pytest.approx(0.5 ** (n_layers - 1))
    assert scale["stage3.3.mlp.conv1.weight"] > scale["stage2.0.mlp.conv1.weight"] > scale["stage1.0.mlp.conv1.weight"]
    # the scheduler applies lr_scale: the first block runs at 0.5**(n-1) of the head's learning rate
    build_scheduler(opt, cfg, total_steps=100, max_epochs=None)
    head_lr = group_of(opt, model.head.weight)["lr"]
    assert group_of(opt, model.stage1[0].mlp.conv1.weight)["lr"] == pytest.approx(head_lr * 0.5 ** (n_layers - 1))


def test_lr_is_scaled_by_global_batch():
    assert scaled_lr(OptimConfig(base_lr=5e-4, base_batch_size=512), 1024) == pytest.approx(1e-3)
    assert scaled_lr(OptimConfig(base_lr=5e-4, base_batch_size=512), 128) == pytest.approx(1.25e-4)


def test_linear_warmup_then_cosine_by_step():
    param = torch.nn.Parameter(torch.zeros(2, 2))
    cfg = OptimConfig(base_lr=1.0, base_batch_size=1, warmup_epochs=2, warmup_lr=0.0, min_lr=0.0, weight_decay=0)
    opt = build_optimizer(torch.nn.Linear(2, 2), cfg, global_batch=1)
    del param
    sched = build_scheduler(opt, cfg, total_steps=100, max_epochs=10)  # 10 steps per epoch -> 20 warm-up steps
    lrs = []
    for step in range(100):
        sched.step_update(step)
        lrs.append(opt.param_groups[0]["lr"])
    assert lrs[0] == pytest.approx(0.0)
    assert lrs[10] == pytest.approx(0.5)  # halfway through warm-up
    assert lrs[20] == pytest.approx(1.0)  # peak at the end of warm-up
    assert lrs[60] == pytest.approx(0.5 * (1 + math.cos(math.pi * 40 / 80)))  # cosine over the remaining 80
    assert lrs[99] < 1e-3


def test_impossible_schedule_is_a_config_error():
    opt = build_optimizer(torch.nn.Linear(2, 2), OptimConfig(), global_batch=1)
    with pytest.raises(ConfigError, match="warm-up"):
        build_scheduler(opt, OptimConfig(warmup_steps=50), total_steps=10, max_epochs=1)
    with pytest.raises(ConfigError, match="group_matcher"):
        param_groups(torch.nn.Linear(2, 2), OptimConfig(layer_decay=0.7))


def lr_trace(cfg: OptimConfig, total: int, max_epochs: int | None) -> list[float]:
    opt = build_optimizer(torch.nn.Linear(2, 2), cfg, global_batch=1)
    sched = build_scheduler(opt, cfg, total_steps=total, max_epochs=max_epochs)
    lrs = []
    for step in range(total):
        sched.step_update(step)
        lrs.append(opt.param_groups[0]["lr"])
    return lrs


def test_step_schedule_decays_at_the_milestone_epochs_counted_from_step_zero():
    """mmdet's 1x: 12 epochs, x0.1 after epochs 8 and 11 (here 10 steps per epoch), linear warm-up first."""
    cfg = OptimConfig(base_lr=1.0, base_batch_size=1, weight_decay=0, schedule="step", decay_epochs=[8, 11],
                      warmup_epochs=0, warmup_steps=10, warmup_lr=0.0)  # fmt: skip
    lrs = lr_trace(cfg, total=120, max_epochs=12)
    assert lrs[0] == pytest.approx(0.0) and lrs[5] == pytest.approx(0.5)
    assert lrs[10] == pytest.approx(1.0) and lrs[79] == pytest.approx(1.0)
    assert lrs[80] == pytest.approx(0.1) and lrs[109] == pytest.approx(0.1)
    assert lrs[110] == pytest.approx(0.01) and lrs[119] == pytest.approx(0.01)
    steps = dict(cfg.__dict__, decay_epochs=[], decay_steps=[80, 110])
    assert lr_trace(OptimConfig(**steps), total=120, max_epochs=None) == pytest.approx(lrs)
    with pytest.raises(ConfigError, match="inside the run"):
        lr_trace(OptimConfig(**dict(steps, decay_steps=[80, 130])), total=120, max_epochs=None)
    with pytest.raises(ConfigError, match="decay_epochs"):
        lr_trace(OptimConfig(**dict(steps, decay_steps=None)), total=120, max_epochs=12)
    with pytest.raises(ConfigError, match="max_steps set optim.decay_steps"):
        lr_trace(cfg, total=120, max_epochs=None)


def test_poly_schedule_is_mmseg_poly_after_a_linear_warmup():
    """mmseg's poly (power 1): lr = (base - min) * (1 - t / T) ** power + min over the whole run."""
    cfg = OptimConfig(base_lr=1.0, base_batch_size=1, weight_decay=0, schedule="poly", poly_power=1.0, min_lr=0.0,
                      warmup_epochs=0, warmup_steps=15, warmup_lr=0.0)  # fmt: skip
    lrs = lr_trace(cfg, total=160, max_epochs=None)
    assert lrs[0] == pytest.approx(0.0)
    for t in (15, 40, 100, 159):
        assert lrs[t] == pytest.approx(1.0 - t / 160)
    squared = lr_trace(OptimConfig(**dict(cfg.__dict__, poly_power=2.0, min_lr=0.1)), total=160, max_epochs=None)
    assert squared[80] == pytest.approx(0.1 + 0.9 * 0.5**2)
    with pytest.raises(ConfigError, match="cosine, step or poly"):
        lr_trace(OptimConfig(**dict(cfg.__dict__, schedule="linear")), total=160, max_epochs=None)
