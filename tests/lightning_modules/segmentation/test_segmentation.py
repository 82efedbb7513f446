"""Segmentation (UPerNet, ADE20K transfer): the head's shapes and PPM values, the iTPN feature adapter's channels,
the error for a backbone without multi-scale outputs, mIoU / aAcc on hand-computed cases, layer-wise lr decay groups,
and a short toy fit that beats the untrained model's mIoU."""

from __future__ import annotations

import lightning as L
import pytest
import timm
import torch
import torch.nn.functional as F

from datamodules.ade20k import ADE20KDataModule
from experiments.configs import load_config
from experiments.errors import ConfigError
from lightning_modules.backbones import create_backbone
from lightning_modules.optim import OptimConfig, param_groups
from lightning_modules.segmentation import MultiScaleFeatures, SegmentationModule, UPerHead, headless_backbone
from lightning_modules.segmentation.losses import pixel_cross_entropy, upernet_loss
from tests.helpers import validate_fit_validate

TINY_ITPN = dict(img_size=64, embed_dim=64, mlp_depth=1, depth=2, num_heads=2, fpn_dim=32, num_outs=4)


def tiny_resnet() -> torch.nn.Module:
    return headless_backbone("resnet18", dict(channels=[8, 16, 32, 64], stem_width=8))


def test_uperhead_shapes_and_stride():
    head = UPerHead([8, 16, 24, 32], channels=16, num_classes=5).eval()
    feats = [torch.randn(2, c, 64 // s, 48 // s) for c, s in zip([8, 16, 24, 32], [4, 8, 16, 32], strict=True)]
    out = head(feats)
    assert out.shape == (2, 5, 16, 12)  # the finest level's size (stride 4)
    with pytest.raises(ValueError, match="3 feature levels"):
        head(feats[:3])


def test_ppm_branch_matches_direct_computation():
    torch.manual_seed(0)
    head = UPerHead([4, 6], channels=3, num_classes=2, pool_scales=(1, 2)).eval()
    x = torch.randn(1, 6, 4, 4)
    branches = head.psp_modules(x)
    for scale, branch, got in zip((1, 2), head.psp_modules, branches, strict=True):
        conv, bn = branch[1][0], branch[1][1]
        pooled = F.adaptive_avg_pool2d(x, scale)
        y = F.conv2d(pooled, conv.weight)
        y = (y - bn.running_mean.view(1, -1, 1, 1)) / torch.sqrt(bn.running_var.view(1, -1, 1, 1) + bn.eps)
        y = F.relu(y * bn.weight.view(1, -1, 1, 1) + bn.bias.view(1, -1, 1, 1))
        expected = F.interpolate(y, size=(4, 4), mode="bilinear", align_corners=False)
        torch.testing.assert_close(got, expected)
    # scale 1: a global average broadcast to every position (hand value: relu(w . mean(x)) at fresh BN stats)
    w = head.psp_modules[0][1][0].weight[:, :, 0, 0]
    direct = F.relu((w @ x.mean(dim=(2, 3))[0]) / (1 + 1e-5) ** 0.5)
    torch.testing.assert_close(branches[0][0, :, 2, 3], direct)


def test_uperhead_value_with_hand_set_weights():
    """One level, pool scale 1, every conv an identity-like map: the logits are computed by hand."""
    head = UPerHead([1], channels=1, num_classes=1, pool_scales=(1,), dropout=0.0).eval()
    with torch.no_grad():
        for p in head.parameters():
            p.zero_()
        head.psp_modules[0][1][0].weight.fill_(1.0)  # PPM: mean(x)
        head.bottleneck[0].weight[0, 0, 1, 1] = 1.0  # bottleneck: x (centre tap of the x channel)
        head.bottleneck[0].weight[0, 1, 1, 1] = 1.0  # + mean(x)
        head.fpn_bottleneck[0].weight[0, 0, 1, 1] = 1.0
        head.conv_seg.weight.fill_(2.0)
        head.conv_seg.bias.fill_(-1.0)
        for bn in (m for m in head.modules() if isinstance(m, torch.nn.BatchNorm2d)):
            bn.weight.fill_(1.0)
            bn.running_var.fill_(1.0)
            bn.eps = 0.0
    x = torch.tensor([[[[1.0, -2.0], [3.0, 0.0]]]])
    expected = 2 * F.relu(F.relu(x + F.relu(x.mean()))) - 1
    torch.testing.assert_close(head([x]), expected)


def test_itpn_adapter_concatenates_pyramid_and_backbone_per_stride():
    backbone = create_backbone("itpn_base_3324_patch16_224", num_classes=0, **TINY_ITPN).eval()
    feats = MultiScaleFeatures(backbone, "tiny itpn")
    assert feats.kind == "itpn" and feats.strides == [4, 8, 16, 32]
    assert feats.out_channels == [32 + 16, 32 + 32, 32 + 64, 32 + 64]
    x = torch.randn(2, 3, 64, 64)
    maps = feats(x)
    assert [tuple(m.shape) for m in maps] == [(2, c, 64 // s, 64 // s) for c, s in zip(
        feats.out_channels, feats.strides, strict=True)]  # fmt: skip
    with torch.no_grad():
        pyramid = backbone.forward_pyramid(x, 3)
    for level, p in enumerate(pyramid):  # the first fpn_dim channels are the pyramid's own maps
        torch.testing.assert_close(maps[level][:, :32], p)
    torch.testing.assert_close(maps[3], F.max_pool2d(maps[2], 2))
    # paper-scale channel counts (facts: [384, 512, 768, 768] for iTPN-B), read from the constructor arithmetic
    assert [256 + c for c in (128, 256, 512, 512)] == [384, 512, 768, 768]


def test_hivit_without_pyramid_gives_its_stage_maps_through_timms_feature_api():
    plain = create_backbone("itpn_base_3324_patch16_224", num_classes=0, **dict(TINY_ITPN, num_outs=1)).eval()
    feats = MultiScaleFeatures(plain, "plain_hivit")
    assert feats.kind == "timm" and feats.strides == [4, 8, 16] and feats.out_channels == [16, 32, 64]
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        maps, stages = feats(x), plain.forward_intermediates(x, intermediates_only=True)
    assert [tuple(m.shape) for m in maps] == [(1, 16, 16, 16), (1, 32, 8, 8), (1, 64, 4, 4)]
    for got, want in zip(maps, stages, strict=True):
        torch.testing.assert_close(got, want)


def test_backbone_without_multiscale_outputs_is_a_config_error():
    vit = timm.create_model("vit_tiny_patch16_224", img_size=32, depth=1, num_classes=0)
    with pytest.raises(ConfigError, match="'vit_tiny_patch16_224'.*at least two strides"):
        MultiScaleFeatures(vit, "vit_tiny_patch16_224")
    with pytest.raises(ConfigError, match="'mlp'.*forward_intermediates"):
        MultiScaleFeatures(torch.nn.Linear(3, 3), "mlp")


def test_timm_adapter_levels():
    feats = MultiScaleFeatures(create_backbone("resnet18", num_classes=0, channels=[8, 16, 32, 64], stem_width=8),
                               "resnet18")  # fmt: skip
    assert feats.strides == [4, 8, 16, 32] and feats.out_channels == [8, 16, 32, 64]
    assert [m.shape[1] for m in feats(torch.randn(1, 3, 64, 64))] == [8, 16, 32, 64]


def _metrics(num_classes: int):
    module = SegmentationModule(tiny_resnet(), num_classes=num_classes, channels=8, aux_channels=8, slide_crop=None)
    return module.val_metrics


def test_miou_two_classes_with_ignore():
    target = torch.tensor([[[0, 0, 1, 1], [0, 1, 255, 255]]])
    pred = torch.tensor([[[0, 1, 1, 1], [0, 0, 1, 0]]])
    metrics = _metrics(2)
    metrics.update(pred, target)
    out = metrics.compute()
    # labelled pixels: t=0,0,1,1,0,1 / p=0,1,1,1,0,0 -> class 0: tp 2, fp 1, fn 1 -> 2/4; class 1: tp 2, fp 1, fn 1
    assert out["val/mIoU"].item() == pytest.approx(0.5)
    assert out["val/aAcc"].item() == pytest.approx(4 / 6)


def test_miou_three_classes_absent_class_left_out():
    target = torch.tensor([[[0, 0, 0, 1], [1, 1, 255, 0]]])
    pred = torch.tensor([[[0, 0, 1, 1], [1, 2, 2, 0]]])
    metrics = _metrics(3)
    metrics.update(pred, target)
    out = metrics.compute()
    # class 0: tp 3 (of t0 = 4), fn 1, fp 0 -> 3/4; class 1: tp 2, fp 1, fn 1 -> 2/4; class 2: tp 0, fp 1 -> 0
    assert out["val/mIoU"].item() == pytest.approx((0.75 + 0.5 + 0.0) / 3)
    assert out["val/aAcc"].item() == pytest.approx(5 / 7)
    metrics = _metrics(4)  # class 3 appears nowhere: left out of the mean (mmseg's nan-mean)
    metrics.update(pred, target)
    assert metrics.compute()["val/mIoU"].item() == pytest.approx((0.75 + 0.5 + 0.0) / 3)


def test_layer_decay_backbone_layers_heads_full_lr():
    backbone = headless_backbone("itpn_base_3324_patch16_224", TINY_ITPN)
    module = SegmentationModule(backbone, num_classes=4, channels=8, aux_channels=8)
    groups = param_groups(module, OptimConfig(layer_decay=0.9))
    scale_of = {id(p): g["lr_scale"] for g in groups for p in g["params"]}
    names = dict(module.named_parameters())
    # 4 main blocks (1 + 1 + 2): patch embed at 0.9 ** 5, last block 0.9, pyramid and heads 1.0 (mmseg's BEiT rule)
    assert scale_of[id(names["backbone.patch_embed.proj.weight"])] == pytest.approx(0.9**5)
    assert scale_of[id(names["backbone.blocks.5.attn.qkv.weight"])] == pytest.approx(0.9)
    assert scale_of[id(names["backbone.pyramid.fpn_modules.0.mlp.fc1.weight"])] == pytest.approx(1.0)
    assert scale_of[id(names["decode_head.conv_seg.weight"])] == pytest.approx(1.0)
    assert scale_of[id(names["auxiliary_head.conv_seg.weight"])] == pytest.approx(1.0)


def test_sliding_window_eval_resizes_to_mask():
    kwargs = dict(channels=8, aux_channels=8, slide_crop=(32, 32), slide_stride=(21, 21))
    module = SegmentationModule(tiny_resnet(), num_classes=3, **kwargs)
    module.eval()
    logits = module.predict_logits(torch.randn(2, 3, 40, 53), (20, 26))
    assert logits.shape == (2, 3, 20, 26)


def test_toy_fit_beats_untrained(tmp_path):
    """A few dozen steps of the toy config (its model and data, fewer steps) lift the toy validation mIoU clearly
    above the untrained model's."""
    cfg = load_config("configs/downstream/toy_upernet.yaml")
    init = dict(cfg["model"]["init_args"])
    init["optim"] = OptimConfig(**init["optim"])
    data = dict(cfg["data"]["init_args"], root=str(tmp_path / "ade"), num_workers=0, persistent_workers=False,
                toy_train=120, toy_val=20)  # fmt: skip
    L.seed_everything(0)
    init["backbone"] = headless_backbone(**init["backbone"]["init_args"])
    module, dm = SegmentationModule(**init), ADE20KDataModule(**data)
    before, after = validate_fit_validate(module, dm, STEPS)
    print(f"toy mIoU {before['val/mIoU']:.3f} -> {after['val/mIoU']:.3f}, "
          f"aAcc {before['val/aAcc']:.3f} -> {after['val/aAcc']:.3f}")  # fmt: skip
    assert after["val/mIoU"] > before["val/mIoU"] + MARGIN
    assert after["val/aAcc"] > before["val/aAcc"] + 0.1


STEPS, MARGIN = 150, 0.05  # measured: mIoU 0.017 -> 0.109, aAcc 0.106 -> 0.292 (26 s)


TINY_BEIT = dict(img_size=64, embed_dim=32, depth=4, num_heads=2, use_rel_pos_bias=True)


def test_vit_neck_gives_beit_strides_from_plain_vit_blocks():
    """MVP / BEiT: four stride-16 block outputs -> strides 4, 8, 16, 32 through BEiT's neck, into UPerHead."""
    torch.manual_seed(0)
    module = SegmentationModule(headless_backbone("beit_base_patch16_224", TINY_BEIT), num_classes=5,
                                channels=16, aux_channels=8, vit_out_indices=[0, 1, 2, 3]).eval()  # fmt: skip
    images = torch.randn(2, 3, 64, 64)
    maps = module.neck(module.features(images))
    assert [m.shape[-1] for m in maps] == [16, 8, 4, 2] and all(m.shape[1] == 32 for m in maps)
    assert module.features.strides == [4, 8, 16, 32]
    # identity at stride 16 and a max-pool at stride 32: values, not only shapes
    raw = module.features(images)
    torch.testing.assert_close(maps[2], raw[2])
    torch.testing.assert_close(maps[3], F.max_pool2d(raw[3], 2))
    assert module(images).shape == (2, 5, 64, 64)
    with pytest.raises(ConfigError, match="must name 4 blocks"):
        SegmentationModule(headless_backbone("beit_base_patch16_224", TINY_BEIT), vit_out_indices=[3, 5, 7, 11])
    with pytest.raises(ConfigError, match="plain ViT"):
        SegmentationModule(headless_backbone("resnet18"), vit_out_indices=[0, 1, 2, 3])


def test_beit_checkpoint_loads_at_a_larger_grid_with_resized_position_tables(tmp_path):
    """A 64 px BEiT checkpoint (4x4 grid) fine-tuned at 128 px (8x8): the relative position tables are resized
    (timm's BEiT filter), not dropped, so the centre entry (zero offset) keeps its pre-trained value."""
    torch.manual_seed(0)
    small = create_backbone("beit_base_patch16_224", num_classes=0, **TINY_BEIT)
    with torch.no_grad():
        for block in small.blocks:
            block.attn.relative_position_bias_table.normal_()
    torch.save({"model": small.state_dict()}, tmp_path / "beit.pth")
    big = create_backbone("beit_base_patch16_224", num_classes=0, pretrained=str(tmp_path / "beit.pth"),
                          **dict(TINY_BEIT, img_size=128))  # fmt: skip
    old = small.blocks[0].attn.relative_position_bias_table
    new = big.blocks[0].attn.relative_position_bias_table
    assert new.shape[0] == 15 * 15 + 3 and old.shape[0] == 7 * 7 + 3
    # the (0, 0) offset sits in the middle of the (2w-1)^2 grid; the last 3 rows (cls tokens) are copied as they are
    torch.testing.assert_close(new[(15 * 15) // 2], old[(7 * 7) // 2], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(new[-3:], old[-3:])


def test_upernet_loss_on_hand_computed_cases():
    """Uniform logits over K classes: cross-entropy log K at every labelled pixel; logits at half the mask's size are
    upsampled first; ignored pixels count nowhere; the auxiliary term enters with its weight."""
    masks = torch.tensor([[[0, 1, 2, 255], [1, 1, 0, 255]]])
    uniform = torch.zeros(1, 3, 1, 2)
    assert pixel_cross_entropy(uniform, masks, 255).item() == pytest.approx(float(torch.log(torch.tensor(3.0))))
    sure = torch.full((1, 3, 2, 4), -20.0)
    sure[0, 0] = 20.0  # class 0 everywhere: right on 2 of the 6 labelled pixels, each miss costs ~40
    miss = F.cross_entropy(torch.tensor([[20.0, -20.0, -20.0]]), torch.tensor([1])).item()  # ~40
    out = upernet_loss(uniform, sure, masks, aux_weight=0.4, ignore_index=255)
    assert out["aux"].item() == pytest.approx(4 * miss / 6, rel=1e-5)
    assert out["loss"].item() == pytest.approx(out["decode"].item() + 0.4 * out["aux"].item())
    no_aux = upernet_loss(uniform, None, masks, aux_weight=0.4, ignore_index=255)
    assert set(no_aux) == {"decode", "loss"} and no_aux["loss"].item() == pytest.approx(no_aux["decode"].item())


def test_starting_weights_name_the_key_when_not_a_local_file():
    with pytest.raises(ConfigError, match=r"^model\.init_args\.pretrained 'timm/resnet18\.a1_in1k' is no local file"):
        SegmentationModule(tiny_resnet(), pretrained="timm/resnet18.a1_in1k", num_classes=3)
