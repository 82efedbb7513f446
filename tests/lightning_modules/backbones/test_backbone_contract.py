"""timm's model contract (its tests/test_models.py checks) over every model this suite registers in timm's registry,
at tiny widths and input sizes: build, forward, backward, default config, features/head split, classifier reset and
``features_only``."""

from __future__ import annotations

import pytest
import timm
import torch
from timm.models import model_entrypoint
from torch import nn

import lightning_modules.backbones  # noqa: F401 (registers the suite's models)
from lightning_modules.backbones.hivit import tokens_to_map

SUITE_MODELS = sorted(
    name for name in timm.list_models() if model_entrypoint(name).__module__.startswith("lightning_modules.")
)

# tiny variants (the architecture stays that of the family, only widths / depths / input shrink)
HIVIT_TINY = dict(img_size=32, embed_dim=64, depth=2, num_heads=2, mlp_depth=1)
NUM_CLASSES = 7


def tiny(name: str) -> tuple[dict, int]:
    """Constructor kwargs of a tiny ``name`` and its input size."""
    if name.startswith("itpn_"):
        return dict(HIVIT_TINY), 32
    if name == "resnet12":
        return dict(channels=(8, 16, 24, 32)), 32
    if name.startswith("visformer_net"):
        return dict(img_size=64, embed_dim=48, init_channels=8, num_heads=2), 64
    raise AssertionError(
        f"no tiny setting for {name}: add one to tests/lightning_modules/backbones/test_backbone_contract.py"
    )


def build(name: str, **extra) -> tuple[nn.Module, torch.Tensor]:
    kwargs, size = tiny(name)
    if name == "visformer_net1":
        kwargs.pop("init_channels")  # net1's ViT stem has no conv stem width
    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False, **kwargs, **extra)
    return model, torch.randn(2, 3, size, size)


def test_the_suite_registers_the_three_families():
    assert SUITE_MODELS == sorted(
        ["itpn_base_3324_patch16_224", "itpn_large_2240_patch16_224", "itpn_large_2240_patch16_256", "resnet12"]
        + [f"visformer_net{i}" for i in range(1, 8)]
    )


@pytest.mark.parametrize("name", SUITE_MODELS)
def test_forward_backward_and_default_cfg(name):
    model, x = build(name, num_classes=NUM_CLASSES)
    out = model(x)
    assert out.shape == (2, NUM_CLASSES)
    assert model.num_classes == NUM_CLASSES
    out.mean().backward()
    no_grad = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert no_grad == []
    cfg = model.pretrained_cfg
    first_conv = model.get_submodule(cfg["first_conv"])
    assert isinstance(first_conv, nn.Conv2d) and first_conv.in_channels == 3
    classifier = model.get_submodule(cfg["classifier"])
    assert classifier is model.get_classifier()
    assert isinstance(classifier, nn.Linear) and classifier.out_features == NUM_CLASSES


@pytest.mark.parametrize("name", SUITE_MODELS)
def test_features_head_split_and_reset_classifier(name):
    model, x = build(name, num_classes=NUM_CLASSES)
    model.eval()
    with torch.no_grad():
        full = model(x)
        features = model.forward_features(x)
        split = model.forward_head(features)
        pre_logits = model.forward_head(model.forward_features(x), pre_logits=True)
        torch.testing.assert_close(split, full)
        assert pre_logits.shape == (2, model.head_hidden_size)
        pool_size = model.pretrained_cfg.get("pool_size")
        if pool_size is not None:  # the final map at the cfg's input size, i.e. its stride
            strides = [size // p for size, p in zip(model.pretrained_cfg["input_size"][1:], pool_size, strict=True)]
            assert tuple(features.shape[-2:]) == tuple(x.shape[-1] // s for s in strides)
        model.reset_classifier(0)
        assert model.num_classes == 0
        assert not any(True for _ in model.get_classifier().parameters())
        pooled = model(x)
    assert pooled.shape == (2, model.head_hidden_size)
    assert model.head_hidden_size == model.num_features


@pytest.mark.parametrize("name", SUITE_MODELS)
def test_features_only_matches_feature_info(name):
    model, x = build(name, features_only=True)
    with torch.no_grad():
        maps = model(x)
    info = model.feature_info
    assert [m.shape[1] for m in maps] == info.channels()
    assert [x.shape[-1] // m.shape[-1] for m in maps] == info.reduction()
    # every feature level names a module of the plain model
    plain, _ = build(name)
    for module in info.module_name():
        plain.get_submodule(module)


def test_hivit_feature_levels_are_the_three_stages():
    model, x = build("itpn_base_3324_patch16_224", num_classes=0)
    model.eval()
    assert [f["reduction"] for f in model.feature_info] == [4, 8, 16]
    assert [f["num_chs"] for f in model.feature_info] == [16, 32, 64]
    assert [f["module"] for f in model.feature_info] == ["blocks.0", "blocks.2", "blocks.5"]
    with torch.no_grad():
        tokens, levels = model.forward_intermediates(x)
        out = model.forward_tokens(x)
        torch.testing.assert_close(tokens, model.forward_features(x))
        grid = (2, 2)
        torch.testing.assert_close(levels[0], tokens_to_map(out.laterals[0], grid))
        torch.testing.assert_close(levels[1], tokens_to_map(out.laterals[1], grid))
        torch.testing.assert_close(levels[2], tokens_to_map(out.tokens[:, :, None, None, :], grid))
        # timm's index semantics: int = last n, negative indices count from the end
        last_two = model.forward_intermediates(x, indices=2, intermediates_only=True)
        torch.testing.assert_close(last_two, levels[1:])
        early = model.forward_intermediates(x, indices=[-3], stop_early=True, intermediates_only=True)
        torch.testing.assert_close(early, levels[:1])
        nlc = model.forward_intermediates(x, indices=[2], output_fmt="NLC", intermediates_only=True)
    torch.testing.assert_close(nlc[0], tokens)  # stage-3 tokens are row-major over the 2x2 grid
    with pytest.raises(ValueError, match="output_fmt"):
        model.forward_intermediates(x, output_fmt="NHWC")


def test_hivit_features_only_drops_head_and_pyramid():
    model, x = build("itpn_base_3324_patch16_224", features_only=True, out_indices=(1, 2), num_outs=3)
    assert model.feature_info.channels() == [32, 64]
    assert model.model.pyramid is None and isinstance(model.model.head, nn.Identity)
    with torch.no_grad():
        maps = model(x)
    assert [tuple(m.shape) for m in maps] == [(2, 32, 4, 4), (2, 64, 2, 2)]


def test_resnet12_intermediates_are_the_four_blocks():
    model, x = build("resnet12")
    model.eval()
    with torch.no_grad():
        final, levels = model.forward_intermediates(x)
        torch.testing.assert_close(final, model.forward_features(x))
    assert [tuple(m.shape) for m in levels] == [(2, 8, 16, 16), (2, 16, 8, 8), (2, 24, 4, 4), (2, 32, 2, 2)]
