"""HiViT / iTPN backbone: sizes from Table 1, patch-level token dropping, the pyramid, the released checkpoint layout.

Two kinds of checkpoint tests: round trips (our own models' weights re-keyed into the released layout and loaded
back: they check the mapping, not equality with the released code) and the golden test, which loads weights saved by
the released ``iTPNMaskedAutoencoder`` and compares its pyramid with the released outputs (``itpn_pixel_small.pt``;
the decoder and loss are compared in tests/lightning_modules/mim/test_itpn_reference.py)."""

from __future__ import annotations

import math

import pytest
import timm
import torch
import torch.nn.functional as F

import lightning_modules.backbones  # noqa: F401  (registers the models)
from experiments.errors import ConfigError
from lightning_modules.backbones import load_checkpoint_file
from lightning_modules.backbones.hivit import HiViT, checkpoint_filter_fn
from lightning_modules.mim.heads import PyramidFeatureHead, PyramidPixelDecoder
from lightning_modules.optim import OptimConfig, param_groups
from tests.helpers import load_golden

TOY = dict(img_size=64, embed_dim=64, mlp_depth=1, depth=2, num_heads=2, fpn_dim=32)


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize(
    "name, paper",
    [
        ("itpn_base_3324_patch16_224", 79e6),
        ("itpn_large_2240_patch16_224", 288e6),
        ("itpn_large_2240_patch16_256", 288e6),
    ],
)
def test_parameter_counts_match_table_1(name, paper):
    with torch.device("meta"):
        model = timm.create_model(name)
    assert abs(n_params(model) - paper) / paper < 0.01


def test_stage_widths_blocks_and_heads():
    with torch.device("meta"):
        base = timm.create_model("itpn_base_3324_patch16_224")
        large = timm.create_model("itpn_large_2240_patch16_256")
    assert base.patch_embed.proj.weight.shape == (128, 3, 4, 4)
    assert [type(b).__name__ for b in base.blocks[:8]] == ["HiViTBlock"] * 3 + ["PatchMerge"] + ["HiViTBlock"] * 3 + [
        "PatchMerge"
    ]
    assert len(base.blocks) == 3 + 1 + 3 + 1 + 24 and base.blocks[-1].attn.num_heads == 8
    assert base.blocks[0].attn is None and base.blocks[0].mlp.fc1.weight.shape == (384, 128)  # MLP-only, ratio 3
    assert len(large.blocks) == 2 + 1 + 2 + 1 + 40 and large.blocks[-1].attn.num_heads == 12
    assert large.grid == 16 and large.blocks[-1].attn.relative_position_bias_table.shape == (31 * 31, 12)


def test_pyramid_parameter_overhead():
    with torch.device("meta"):
        plain = n_params(timm.create_model("itpn_base_3324_patch16_224", num_classes=0))
        two = n_params(timm.create_model("itpn_base_3324_patch16_224", num_classes=0, num_outs=3, fpn_depth=2))
        one = n_params(timm.create_model("itpn_base_3324_patch16_224", num_classes=0, num_outs=3, fpn_depth=1))
    assert abs((two - plain) / 1e6 - 4.7) < 0.05 and abs((one - plain) / 1e6 - 3.65) < 0.05


def toy_model(**kwargs) -> HiViT:
    torch.manual_seed(0)
    return timm.create_model("itpn_base_3324_patch16_224", num_classes=0, num_outs=3, **{**TOY, **kwargs}).eval()


@pytest.mark.parametrize("rpe", [False, True])
def test_visible_tokens_do_not_depend_on_masked_pixels(rpe):
    model = toy_model(rpe=rpe)
    x1 = torch.randn(2, 3, 64, 64)
    ids_keep = torch.tensor([[0, 5, 6, 15], [3, 4, 9, 10]])
    x2 = x1.clone()
    for b in range(2):  # scramble every patch that is not kept
        for p in set(range(16)) - set(ids_keep[b].tolist()):
            r, c = divmod(p, 4)
            x2[b, :, 16 * r : 16 * r + 16, 16 * c : 16 * c + 16] = torch.randn(3, 16, 16) * 5
    with torch.no_grad():
        o1, o2 = model.forward_tokens(x1, ids_keep=ids_keep), model.forward_tokens(x2, ids_keep=ids_keep)
        p1, p2 = model.pyramid(o1.tokens, o1.laterals), model.pyramid(o2.tokens, o2.laterals)
        full = model.forward_tokens(x1)
    torch.testing.assert_close(o1.tokens, o2.tokens)
    for a, b in zip(p1, p2, strict=True):
        torch.testing.assert_close(a, b)
    assert o1.tokens.shape == (2, 4, 64)
    # and the masked pixels do matter without dropping (the test would pass vacuously otherwise)
    assert not torch.allclose(full.tokens, model.forward_tokens(x2).tokens)


def test_keeping_every_patch_equals_the_full_forward_and_orders_follow_ids():
    model = toy_model(rpe=True)
    x = torch.randn(2, 3, 64, 64)
    perm = torch.stack([torch.randperm(16), torch.randperm(16)])
    with torch.no_grad():
        full = model.forward_tokens(x).tokens
        kept = model.forward_tokens(x, ids_keep=perm).tokens
    torch.testing.assert_close(kept, full.gather(1, perm[:, :, None].expand(-1, -1, 64)), atol=1e-5, rtol=1e-5)


def test_relative_position_bias_matches_the_explicit_softmax_formula():
    model = toy_model(rpe=True)
    blk = model.blocks[-1]
    torch.nn.init.normal_(blk.attn.relative_position_bias_table, std=1.0)
    x = torch.randn(2, 16, 64)
    attn = blk.attn
    B, N, C, H = 2, 16, 64, 2
    q, k, v = attn.qkv(x).reshape(B, N, 3, H, C // H).permute(2, 0, 3, 1, 4)
    bias = attn.relative_position_bias_table[model.relative_position_index.view(-1)].view(N, N, H).permute(2, 0, 1)
    weights = ((q * (C // H) ** -0.5) @ k.transpose(-2, -1) + bias).softmax(-1)
    expected = attn.proj((weights @ v).transpose(1, 2).reshape(B, N, C))
    torch.testing.assert_close(attn(x, model.relative_position_index), expected, atol=1e-5, rtol=1e-4)
    # relative offsets: token (0,0) vs (1,2) and (1,1) vs (2,3) share one table row
    idx = model.relative_position_index
    assert idx[0, 6] == idx[5, 11] and idx[0, 6] != idx[6, 0]


def test_forward_pyramid_levels_strides_and_pooling():
    model = toy_model()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        maps = model.forward_pyramid(x, num_outs=5)
        out = model.forward_tokens(x)
        p16 = model.pyramid(out.tokens, out.laterals)[0]
    assert [tuple(m.shape) for m in maps] == [
        (1, 32, 16, 16),
        (1, 32, 8, 8),
        (1, 32, 4, 4),
        (1, 32, 2, 2),
        (1, 32, 1, 1),
    ]
    torch.testing.assert_close(maps[2], p16[:, :, 0, 0, :].transpose(1, 2).reshape(1, 32, 4, 4))
    torch.testing.assert_close(maps[3], F.avg_pool2d(maps[2], 2))
    torch.testing.assert_close(maps[4], F.avg_pool2d(maps[3], 2))


def test_patch_embed_keeps_each_16px_patch_in_its_own_token():
    model = toy_model()
    x = torch.zeros(1, 3, 64, 64)
    x[:, :, 16:32, 32:48] = 1.0  # patch (row 1, col 2) = token 6
    with torch.no_grad():
        tokens = model.patch_embed(x)
        base = model.patch_embed(torch.zeros(1, 3, 64, 64))
    changed = (tokens - base).abs().flatten(2).sum(-1)[0]
    assert changed.nonzero().flatten().tolist() == [6]


def test_bad_image_size_names_the_multiple():
    model = toy_model()
    with pytest.raises(ConfigError, match="not a multiple of the patch size 16"):
        model.forward_tokens(torch.randn(1, 3, 60, 60))
    with pytest.raises(ConfigError, match="img_size"):
        timm.create_model("itpn_base_3324_patch16_224", img_size=200)


def test_layer_decay_follows_itpn_rule():
    with torch.device("meta"):
        model = timm.create_model("itpn_base_3324_patch16_224")
    groups = param_groups(model, OptimConfig(layer_decay=0.6, layer_decay_reference=13))
    decay = 0.6 ** (13 / 31)
    scale = {}
    for g in groups:
        for p in g["params"]:
            scale[id(p)] = g["lr_scale"]
    named = dict(model.named_parameters())

    def s(name):
        return scale[id(named[name])]

    assert math.isclose(s("head.weight"), 1.0) and math.isclose(s("fc_norm.weight"), 1.0)
    assert math.isclose(s("patch_embed.proj.weight"), decay**31) and math.isclose(decay**31, 0.6**13)
    assert math.isclose(s("absolute_pos_embed"), decay**31)
    assert math.isclose(s("blocks.0.mlp.fc1.weight"), decay**30)
    assert math.isclose(s("blocks.3.reduction.weight"), s("blocks.2.mlp.fc1.weight"))  # merge shares its layer
    assert math.isclose(s("blocks.8.attn.qkv.weight"), decay ** (31 - 7))
    assert math.isclose(s("blocks.31.mlp.fc2.weight"), decay)
    assert len({round(g["lr_scale"], 9) for g in groups}) == 32


# ---- the released checkpoint layout: round trips of our own models, then the golden -----------------------------
def round_trip_backbone(model: HiViT, with_index: bool) -> dict:
    """A round trip, not a released file: our HiViT's state re-keyed into the released layout (the pyramid at the top
    level, the rpe index buffer saved)."""
    out = {}
    for k, v in model.state_dict().items():
        out[k[len("pyramid.") :] if k.startswith("pyramid.") else k] = v.clone()
    if with_index and model.relative_position_index is not None:
        out["relative_position_index"] = model.relative_position_index.clone()
    return out


def pixel_pretrain_round_trip(model: HiViT) -> dict:
    """Round trip: our backbone and a fresh decoder in the released pixel pre-training file's layout."""
    decoder = PyramidPixelDecoder(32, 4, 16, 64, 2, 4)
    state = round_trip_backbone(model, with_index=False)
    state.update({k: v for k, v in decoder.state_dict().items()})
    return {"model": state, "epoch": 399, "args": None}


def clip_pretrain_round_trip(model: HiViT) -> dict:
    """Round trip: our backbone and fresh CLIP heads in the released CLIP pre-training file's layout."""
    heads = PyramidFeatureHead(64, 32, 24, 2, 4)
    state = round_trip_backbone(model, with_index=True)
    state.update(heads.state_dict())
    state["mask_token"] = torch.zeros(1, 1, 64)
    return {"model": state}


def test_round_trip_layout_key_names_and_shapes_itpn_base():
    """Our iTPN-B re-keyed into the released layout has the released names and shapes (read from
    ``models_itpn_mim.py``); the golden test below checks the names against a state dict the released code saved."""
    with torch.device("meta"):
        model = timm.create_model("itpn_base_3324_patch16_224", num_classes=0, num_outs=3, rpe=False)
        decoder = PyramidPixelDecoder()
    state = {**round_trip_backbone(model, with_index=False), **decoder.state_dict()}
    expected = {
        "patch_embed.proj.weight": (128, 3, 4, 4),
        "patch_embed.norm.weight": (128,),
        "absolute_pos_embed": (1, 196, 512),
        "blocks.0.mlp.fc1.weight": (384, 128),
        "blocks.3.reduction.weight": (256, 512),
        "blocks.4.mlp.fc1.weight": (768, 256),
        "blocks.7.norm.weight": (1024,),
        "blocks.7.reduction.weight": (512, 1024),
        "blocks.8.attn.qkv.weight": (1536, 512),
        "blocks.31.mlp.fc1.weight": (2048, 512),
        "align_dim_16tofpn.weight": (256, 512),
        "split_16to8.reduction.weight": (1024, 512),
        "align_dim_16to8.weight": (256, 256),
        "split_8to4.reduction.weight": (1024, 256),
        "align_dim_8to4.weight": (256, 128),
        "block_16to8.1.mlp.fc1.weight": (1024, 256),
        "fpn_modules.2.norm2.weight": (256,),
        "decoder_embed.0.0.weight": (256,),
        "decoder_embed.0.1.weight": (512, 256),
        "decoder_embed.1.1.weight": (128, 256),
        "decoder_embed.2.1.weight": (32, 256),
        "mask_token": (1, 1, 512),
        "decoder_pos_embed": (1, 196, 512),
        "decoder_blocks.7.attn.qkv.weight": (1536, 512),
        "decoder_pred.weight": (768, 512),
    }
    for key, shape in expected.items():
        assert tuple(state[key].shape) == shape, key
    assert "blocks.3.norm1.weight" not in state and "blocks.0.norm1.weight" not in state  # MLP-only blocks


@pytest.mark.parametrize("layout", ["pixel", "clip"])
def test_pretraining_layout_round_trips_into_the_pyramid_backbone(tmp_path, layout, caplog):
    rpe = layout == "clip"
    source = toy_model(rpe=rpe, init_values=0.1 if rpe else None)
    with torch.no_grad():  # non-trivial values everywhere (zero-initialised tables and biases included)
        for p in source.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    ckpt = (pixel_pretrain_round_trip if layout == "pixel" else clip_pretrain_round_trip)(source)
    path = tmp_path / f"itpn_{layout}.pth"
    torch.save(ckpt, path)
    target = toy_model(rpe=rpe, init_values=0.1 if rpe else None)
    with caplog.at_level("WARNING"):
        load_checkpoint_file(target, str(path))
    assert "pre-training-only" in caplog.text
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        for a, b in zip(source.forward_pyramid(x), target.forward_pyramid(x), strict=True):
            torch.testing.assert_close(a, b)


def test_pixel_pretraining_round_trip_into_an_rpe_classifier_keeps_zero_bias_tables(tmp_path):
    source = toy_model(rpe=False)
    torch.save(pixel_pretrain_round_trip(source), tmp_path / "pixel.pth")
    torch.manual_seed(1)
    clf = timm.create_model("itpn_base_3324_patch16_224", num_classes=10, **{**TOY, "rpe": True}).eval()
    load_checkpoint_file(clf, str(tmp_path / "pixel.pth"))
    assert all(not b.attn.relative_position_bias_table.detach().any() for b in clf.blocks[-2:])
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():  # zero bias tables: the same tokens as the rpe-free source
        torch.testing.assert_close(clf.forward_features(x), source.forward_features(x))


def test_finetuned_classifier_layout_round_trips(tmp_path):
    torch.manual_seed(0)
    source = timm.create_model("itpn_base_3324_patch16_224", num_classes=7, init_values=0.1, **TOY).eval()
    with torch.no_grad():
        for p in source.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    state = round_trip_backbone(source, with_index=True)
    torch.save({"model": state, "epoch": 99}, tmp_path / "ft.pth")
    target = timm.create_model("itpn_base_3324_patch16_224", num_classes=7, init_values=0.1, **TOY).eval()
    load_checkpoint_file(target, str(tmp_path / "ft.pth"))
    x = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(target(x), source(x))
    assert set(state) >= {"fc_norm.weight", "head.weight", "blocks.2.gamma_2", "blocks.5.gamma_1"}


def test_fpn_depth_1_round_trip_into_fpn_depth_2_model_keeps_the_extra_blocks():
    source = toy_model(fpn_depth=1)
    target = toy_model(fpn_depth=2)
    state = checkpoint_filter_fn({"model": round_trip_backbone(source, with_index=False)}, target)
    assert torch.equal(
        state["pyramid.block_16to8.1.mlp.fc1.weight"], target.state_dict()["pyramid.block_16to8.1.mlp.fc1.weight"]
    )
    torch.testing.assert_close(
        state["pyramid.block_16to8.0.mlp.fc1.weight"], source.state_dict()["pyramid.block_16to8.0.mlp.fc1.weight"]
    )


def test_wrong_variant_names_the_key_and_both_shapes(tmp_path):
    torch.save({"model": round_trip_backbone(toy_model(), with_index=False)}, tmp_path / "b.pth")
    wide = toy_model(embed_dim=96, num_heads=3)
    with pytest.raises(ConfigError) as err:
        load_checkpoint_file(wide, str(tmp_path / "b.pth"))
    msg = str(err.value)
    assert "'absolute_pos_embed' has shape [1, 16, 64] in the checkpoint but [1, 16, 96] in the model" in msg


def test_position_table_is_resampled_for_another_input_size():
    source = toy_model(rpe=True)
    big = timm.create_model("itpn_base_3324_patch16_224", num_classes=0, num_outs=3, **{**TOY, "img_size": 96})
    state = checkpoint_filter_fn(round_trip_backbone(source, with_index=True), big)
    assert state["absolute_pos_embed"].shape == (1, 36, 64)
    assert state["blocks.4.attn.relative_position_bias_table"].shape == (121, 2)
    big.load_state_dict(state)


def golden_backbone(golden: dict, pos_embed_mode: str) -> HiViT:
    c = golden["config"]
    names = ("img_size", "embed_dim", "mlp_depth", "depth", "num_heads", "bridge_mlp_ratio", "mlp_ratio", "num_outs")
    kwargs = {k: c[k] for k in names + ("fpn_dim", "fpn_depth", "rpe", "ape")}
    return timm.create_model(
        "itpn_base_3324_patch16_224", num_classes=0, pos_embed_mode=pos_embed_mode, **kwargs
    ).eval()


def test_released_pixel_pretraining_weights_reproduce_the_released_pyramid(tmp_path):
    """Golden (equality with the released code): weights saved by the released ``iTPNMaskedAutoencoder`` load
    through ``checkpoint_filter_fn`` and, with the released masks and the reference position-table mode, give the
    released ``forward_features(images, ids_keep)`` pyramid within 1e-5."""
    golden = load_golden("itpn_pixel_small.pt")
    path = tmp_path / "released_pixel.pth"
    torch.save({"model": golden["state_dict"], "epoch": 0}, path)
    model = golden_backbone(golden, "reference")
    load_checkpoint_file(model, str(path))
    # the round-trip layout is the released one: the same encoder and pyramid names, nothing else
    released_backbone = {k for k in golden["state_dict"] if not k.startswith(("decoder_", "mask_token"))}
    assert set(round_trip_backbone(model, with_index=False)) == released_backbone
    with torch.no_grad():
        out = model.forward_tokens(golden["images"], ids_keep=golden["ids_keep"])
        levels = model.pyramid(out.tokens, out.laterals)
    for ours, ref in zip(levels, golden["pyramid"], strict=True):
        torch.testing.assert_close(ours, ref, rtol=0, atol=1e-5)
