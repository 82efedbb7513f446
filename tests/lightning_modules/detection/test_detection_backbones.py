"""Mask R-CNN on the suite's backbones: iTPN pyramid as the FPN, timm stages + FPN, Detectron2-style R50-C4."""

from __future__ import annotations

import pytest
import torch

from experiments.errors import ConfigError
from lightning_modules.backbones import create_backbone
from lightning_modules.detection import (
    PyramidBackbone,
    ResNetC4Backbone,
    TimmFPNBackbone,
    build_mask_rcnn,
)
from tests.helpers import ITPN, SMALL_RCNN, TOY_HIVIT, toy_batch

LOSSES = {"loss_classifier", "loss_box_reg", "loss_mask", "loss_objectness", "loss_rpn_box_reg"}


def train_and_eval(model, evaluate: bool = True) -> None:
    torch.manual_seed(0)
    images, targets = toy_batch()
    model.train()
    losses = model(images, targets)
    assert set(losses) == LOSSES
    assert all(torch.isfinite(v) for v in losses.values()), losses
    sum(losses.values()).backward()
    if not evaluate:
        return
    model.eval()
    with torch.no_grad():
        out = model(images)
    assert len(out) == 2
    for det in out:
        assert {"boxes", "labels", "scores", "masks"} <= set(det)
        n = det["boxes"].shape[0]
        assert det["boxes"].shape == (n, 4) and det["labels"].shape == (n,) and det["scores"].shape == (n,)
        assert det["masks"].shape == (n, 1, 64, 64)


def test_itpn_pyramid_backbone_strides_and_channels():
    body = create_backbone(ITPN, num_classes=0, num_outs=5, **TOY_HIVIT).eval()
    net = PyramidBackbone(body)
    assert net.out_channels == 32
    with torch.no_grad():
        feats = net(torch.rand(2, 3, 64, 64))
    assert list(feats) == ["0", "1", "2", "3", "pool"]
    sizes = [f.shape[-1] for f in feats.values()]
    assert [64 // s for s in sizes] == [4, 8, 16, 32, 64] == net.strides
    assert all(f.shape[:2] == (2, 32) and f.shape[-2] == f.shape[-1] for f in feats.values())


def test_itpn_mask_rcnn_train_step_and_eval():
    model = build_mask_rcnn("itpn_pyramid", ITPN, TOY_HIVIT, num_classes=3, **SMALL_RCNN)
    assert isinstance(model.backbone, PyramidBackbone)
    assert model.transform.min_size == (64,) and model.transform.max_size == 64
    assert model.transform.size_divisible == 64
    assert [s[0] for s in model.rpn.anchor_generator.sizes] == [32, 64, 128, 256, 512]
    assert model.roi_heads.box_roi_pool.featmap_names == ["0", "1", "2", "3"]
    train_and_eval(model)


def test_itpn_pretrained_checkpoint_loads_backbone_and_pyramid(tmp_path):
    # a MIM pre-training Lightning checkpoint: the HiViT (with pyramid) under "encoder.", plus decoder weights
    source = create_backbone(ITPN, num_classes=0, num_outs=3, **TOY_HIVIT)
    state = {f"encoder.{k}": v.clone() for k, v in source.state_dict().items()}
    state["decoder_pred.weight"] = torch.zeros(4, 4)
    path = tmp_path / "last.ckpt"
    torch.save({"state_dict": state, "pytorch-lightning_version": "2.5.0"}, path)

    model = build_mask_rcnn("itpn_pyramid", ITPN, TOY_HIVIT, num_classes=3, pretrained=str(path), **SMALL_RCNN)
    report = model.pretrained_report
    assert report.missing == [] and report.unexpected == []
    assert report.loaded == len(source.state_dict())
    body = model.backbone.body
    for key in ("blocks.4.attn.qkv.weight", "pyramid.split_8to4.reduction.weight", "absolute_pos_embed"):
        assert torch.equal(body.state_dict()[key], source.state_dict()[key]), key
    assert torch.equal(body.pyramid.fpn_modules[2].mlp.fc1.weight, source.pyramid.fpn_modules[2].mlp.fc1.weight)


def test_pretrained_missing_keys_raise(tmp_path):
    source = create_backbone(ITPN, num_classes=0, num_outs=3, **TOY_HIVIT)
    state = {f"encoder.{k}": v for k, v in source.state_dict().items() if not k.startswith("blocks.4.")}
    path = tmp_path / "partial.ckpt"
    torch.save({"state_dict": state, "pytorch-lightning_version": "2.5.0"}, path)
    with pytest.raises(ConfigError, match="blocks.4"):
        build_mask_rcnn("itpn_pyramid", ITPN, TOY_HIVIT, num_classes=3, pretrained=str(path), **SMALL_RCNN)
    model = build_mask_rcnn(
        "itpn_pyramid", ITPN, TOY_HIVIT, num_classes=3, pretrained=str(path), strict_pretrained=False, **SMALL_RCNN
    )
    assert model.pretrained_report.missing and all(k.startswith("blocks.4.") for k in model.pretrained_report.missing)


def test_timm_fpn_backbone_on_resnet():
    net = TimmFPNBackbone(create_backbone("resnet18", num_classes=0), "resnet18").eval()
    assert net.in_channels == [64, 128, 256, 512] and net.out_channels == 256
    with torch.no_grad():
        feats = net(torch.rand(1, 3, 64, 128))
    assert list(feats) == ["0", "1", "2", "3", "pool"]
    assert [(f.shape[1], 64 // f.shape[-2], 128 // f.shape[-1]) for f in feats.values()] == [
        (256, s, s) for s in (4, 8, 16, 32, 64)
    ]


def test_timm_fpn_visformer_variable_size():
    # timm's Visformer fixes the input size; the adapter resamples the position embeddings and pads
    net = TimmFPNBackbone(create_backbone("visformer_tiny", num_classes=0), "visformer_tiny").eval()
    assert net.strides == [8, 16, 32, 64]
    with torch.no_grad():
        feats = net(torch.rand(1, 3, 64, 96))
    assert [tuple(f.shape[-2:]) for f in feats.values()] == [(8, 12), (4, 6), (2, 3), (1, 2)]


def test_timm_fpn_mask_rcnn_train_step():
    model = build_mask_rcnn("timm_fpn", "resnet18", {}, num_classes=3, **SMALL_RCNN)
    assert model.roi_heads.box_roi_pool.featmap_names == ["0", "1", "2", "3"]
    train_and_eval(model, evaluate=False)


def test_config_error_without_multiscale_outputs():
    name = "vit_tiny_patch16_224"
    with pytest.raises(ConfigError, match=f"backbone '{name}' has no multi-scale outputs"):
        build_mask_rcnn("timm_fpn", name, dict(img_size=64, depth=1), num_classes=3, **SMALL_RCNN)


def test_timm_fpn_takes_hivit_stages():
    """HiViT's timm feature levels (stages at strides 4, 8, 16) under torchvision's FPN, without iTPN's pyramid."""
    model = build_mask_rcnn("timm_fpn", ITPN, dict(TOY_HIVIT), num_classes=3, **SMALL_RCNN)
    assert model.roi_heads.box_roi_pool.featmap_names == ["0", "1", "2"]
    with torch.no_grad():
        feats = model.backbone(torch.rand(1, 3, 64, 96))
    assert {k: tuple(v.shape) for k, v in feats.items()} == {
        "0": (1, 256, 16, 24),
        "1": (1, 256, 8, 12),
        "2": (1, 256, 4, 6),
        "pool": (1, 256, 2, 3),
    }


def test_resnet_c4_mask_rcnn_train_step():
    model = build_mask_rcnn("resnet_c4", "resnet18", {}, num_classes=3, **SMALL_RCNN)
    assert isinstance(model.backbone, ResNetC4Backbone)
    assert model.backbone.out_channels == 256  # res4 of ResNet-18 (1024 for ResNet-50)
    assert model.rpn.anchor_generator.sizes == ((32, 64, 128, 256, 512),)
    assert model.roi_heads.box_head.out_channels == 512  # pooled res5 (2048 for ResNet-50)
    assert model.roi_heads.mask_head is model.roi_heads.box_head.res5  # shared res5 weights
    with torch.no_grad():
        c4 = model.backbone(torch.rand(1, 3, 64, 64))["0"]
    assert c4.shape[-1] == 64 // 16
    train_and_eval(model, evaluate=False)


def test_resnet50_c4_shapes():
    body = create_backbone("resnet50", num_classes=0)
    net, head = ResNetC4Backbone.split(body, "resnet50")
    assert net.out_channels == 1024 and head.out_channels == 2048
    with torch.no_grad():
        assert head(torch.rand(1, 1024, 14, 14)).shape == (1, 2048)
