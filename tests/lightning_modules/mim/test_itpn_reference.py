"""iTPN pixel pre-training against the released code: the golden ``itpn_pixel_small.pt`` (weights in the layout of
``iTPNMaskedAutoencoder``, ``itpn_pixel/models/models_itpn_mim.py`` of sunsmarterjie/iTPN, its masks and outputs)
loads into MaskedImageModeling and reproduces the released pyramid, prediction and loss in the reference
position-table mode; the converter's errors; the recipes' configs (reference table, L/14 masking)."""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import pytest
import torch
import yaml

from experiments.configs import load_config
from experiments.errors import ConfigError
from lightning_modules.backbones.hivit import reference_resample_pos_table
from lightning_modules.mim import ClipTeacher, MaskedImageModeling, mim_encoder
from lightning_modules.mim.released import released_pixel_state_dict
from tests.helpers import load_golden

REPO = Path(__file__).resolve().parents[3]
TOL = dict(rtol=0, atol=1e-5)  # the tolerance


def golden_module(
    golden: dict, encoder_overrides: dict | None = None, pos_embed_mode: str = "reference", **kwargs
) -> MaskedImageModeling:
    """A pixel pre-training module with the golden's constructor arguments (``golden['config']``)."""
    c = golden["config"]
    names = ("img_size", "embed_dim", "mlp_depth", "depth", "num_heads", "bridge_mlp_ratio", "mlp_ratio", "num_outs")
    encoder_kwargs = {k: c[k] for k in names + ("fpn_dim", "fpn_depth", "rpe", "ape")}
    encoder_kwargs.update(encoder_overrides or {})
    args = dict(
        target="pixels",
        mask_type="random",
        mask_ratio=golden["mask_ratio"],
        norm_pix_loss=golden["norm_pix_loss"],
        decoder_dim=c["decoder_embed_dim"],
        decoder_depth=c["decoder_depth"],
        decoder_heads=c["decoder_num_heads"],
    )
    encoder = mim_encoder("itpn_base_3324_patch16_224", encoder_kwargs, pos_embed_mode=pos_embed_mode)
    return MaskedImageModeling(encoder, **{**args, **kwargs}).eval()


def golden_terms(module: MaskedImageModeling, golden: dict) -> dict:
    masks = (golden["ids_keep"], golden["ids_restore"], golden["mask"])
    with torch.no_grad():
        return module.shared_step({"image": golden["images"]}, masks=masks)


def test_released_pixel_pretraining_loads_by_path_and_reproduces_pyramid_pred_and_loss(tmp_path):
    golden = load_golden("itpn_pixel_small.pt")
    assert golden["norm_layer_eps"] == 1e-6 and golden["norm_pix_loss"]
    # as MAE's misc.save_model writes it: the weights under 'model', with the argparse namespace beside them
    path = tmp_path / "checkpoint-399.pth"
    torch.save({"model": golden["state_dict"], "epoch": 399, "args": argparse.Namespace(mask_ratio=0.75)}, path)
    module = golden_module(golden, released_checkpoint=str(path))
    state = module.state_dict()
    assert len(state) == len(golden["state_dict"])  # encoder, pyramid and decoder: one tensor for one
    for ours, released in [
        ("encoder.absolute_pos_embed", "absolute_pos_embed"),
        ("encoder.blocks.4.attn.qkv.weight", "blocks.4.attn.qkv.weight"),
        ("encoder.pyramid.split_16to8.reduction.weight", "split_16to8.reduction.weight"),
        ("decoder.mask_token", "mask_token"),
        ("decoder.decoder_embed.2.1.weight", "decoder_embed.2.1.weight"),
        ("decoder.decoder_pred.bias", "decoder_pred.bias"),
    ]:
        assert torch.equal(state[ours], golden["state_dict"][released]), released
    terms = golden_terms(module, golden)
    assert len(terms["levels"]) == len(golden["pyramid"]) == 3
    for ours, ref in zip(terms["levels"], golden["pyramid"], strict=True):
        torch.testing.assert_close(ours, ref, **TOL)
    torch.testing.assert_close(terms["pred"], golden["pred"], **TOL)
    torch.testing.assert_close(terms["loss"], golden["loss"], **TOL)


def test_exact_table_mode_departs_from_the_released_pyramid():
    """The (Hp + 0.1) / Hp resampling is what the released pre-training saw: without it the pyramid differs."""
    golden = load_golden("itpn_pixel_small.pt")
    module = golden_module(golden, pos_embed_mode="exact")
    module.load_state_dict(released_pixel_state_dict(golden["state_dict"], module))
    terms = golden_terms(module, golden)
    gap = max((ours - ref).abs().max().item() for ours, ref in zip(terms["levels"], golden["pyramid"], strict=True))
    assert gap > 1e-3
    assert (terms["pred"] - golden["pred"]).abs().max().item() > 1e-3


def cubic_convolution(values: torch.Tensor, at: torch.Tensor, a: float = -0.75) -> torch.Tensor:
    """1-D cubic convolution (Keys 1981, PyTorch's bicubic ``A = -0.75``) of ``values`` at positions ``at``, the
    border clamped, written out term by term."""
    out = []
    for t in at.tolist():
        base = math.floor(t)
        total = 0.0
        for k in range(base - 1, base + 3):
            d = abs(t - k)
            w = (a + 2) * d**3 - (a + 3) * d**2 + 1 if d <= 1 else a * d**3 - 5 * a * d**2 + 8 * a * d - 4 * a
            total += w * values[min(max(k, 0), len(values) - 1)].item()
        out.append(total)
    return torch.tensor(out, dtype=values.dtype)


def test_reference_resampling_reads_row_i_at_the_scaled_position():
    """The released ``interpolate_pos_encoding`` at the table's own grid: output row ``i`` is the bicubic value of
    the table at input row ``(i + 0.5) * S / (S + 0.1) - 0.5``, not at row ``i``."""
    side = 14
    torch.manual_seed(0)
    profile = torch.randn(side, dtype=torch.float64)  # varies along the rows only
    table = profile.view(side, 1, 1).expand(side, side, 1).reshape(1, side * side, 1)
    out = reference_resample_pos_table(table, (side, side)).reshape(side, side)
    i = torch.arange(side, dtype=torch.float64)
    read_at = (i + 0.5) * side / (side + 0.1) - 0.5
    torch.testing.assert_close(out[:, 3], cubic_convolution(profile, read_at))
    assert (out[:, 3] - profile).abs().max() > 1e-2  # not the table's own rows
    # columns alike: the transposed table gives the transposed result
    transposed = reference_resample_pos_table(
        profile.view(1, side, 1).expand(side, side, 1).reshape(1, -1, 1), (14, 14)
    )
    torch.testing.assert_close(transposed.reshape(side, side)[3], cubic_convolution(profile, read_at))
    assert read_at[0] - i[0] == pytest.approx(-0.5 * 0.1 / 14.1) and read_at[-1] - i[-1] == pytest.approx(
        -13.5 * 0.1 / 14.1
    )


def test_reference_mode_keeps_the_table_when_every_patch_is_kept():
    """As the released code: the table is resampled only when fewer tokens than table rows reach it."""
    kw = dict(img_size=64, embed_dim=64, mlp_depth=1, depth=2, num_heads=2, fpn_dim=32, fpn_depth=1, rpe=False)
    torch.manual_seed(0)
    decoder = dict(decoder_dim=32, decoder_depth=1, decoder_heads=2)
    exact = MaskedImageModeling(mim_encoder(kwargs=kw), **decoder).eval()
    reference = MaskedImageModeling(mim_encoder(kwargs=kw, pos_embed_mode="reference"), **decoder).eval()
    reference.load_state_dict(exact.state_dict())
    x = torch.randn(2, 3, 64, 64)
    every = torch.stack([torch.randperm(16), torch.randperm(16)])
    some = every[:, :4]
    with torch.no_grad():
        torch.testing.assert_close(
            reference.encoder.forward_tokens(x, ids_keep=every).tokens,
            exact.encoder.forward_tokens(x, ids_keep=every).tokens,
        )
        torch.testing.assert_close(reference.encoder.forward_features(x), exact.encoder.forward_features(x))
        gap = (
            reference.encoder.forward_tokens(x, ids_keep=some).tokens
            - exact.encoder.forward_tokens(x, ids_keep=some).tokens
        )
    assert gap.abs().max() > 1e-4


# ---- the converter's errors --------------------------------------------------------------------------------------
def test_missing_and_leftover_keys_are_listed_with_the_fix():
    golden = load_golden("itpn_pixel_small.pt")
    module = golden_module(golden)
    state = dict(golden["state_dict"])
    del state["decoder_pred.weight"]
    state["lm_head.weight"] = torch.zeros(8, 64)
    with pytest.raises(ConfigError) as err:
        released_pixel_state_dict({"model": state}, module, source="/ckpt/itpn_clip.pth")
    msg = str(err.value)
    assert msg.startswith("/ckpt/itpn_clip.pth does not fit this iTPN pixel pre-training module")
    assert "1 module tensors are missing from it (decoder.decoder_pred.weight)" in msg
    assert "1 of its tensors have no place in the module (lm_head.weight)" in msg
    assert "this is a CLIP pre-training checkpoint" in msg


def test_rpe_module_names_the_switch():
    golden = load_golden("itpn_pixel_small.pt")
    module = golden_module(golden, encoder_overrides={"rpe": True})
    with pytest.raises(ConfigError, match="set the encoder's kwargs.rpe false"):
        released_pixel_state_dict(golden["state_dict"], module)


def test_other_sizes_name_the_key_and_both_shapes():
    golden = load_golden("itpn_pixel_small.pt")
    module = golden_module(golden, decoder_dim=64, decoder_heads=2)
    with pytest.raises(ConfigError) as err:
        released_pixel_state_dict(golden["state_dict"], module, source="small.pth")
    assert "'decoder.mask_token' has shape [1, 1, 32] in the checkpoint but [1, 1, 64] in the module" in str(err.value)


def test_clip_recipe_module_and_non_checkpoints_are_refused(tmp_path):
    golden = load_golden("itpn_pixel_small.pt")
    tiny_clip = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, patch_size=16)
    clip = golden_module(
        golden,
        target="clip",
        mask_type="block",
        num_mask_patches=6,
        min_mask_patches=2,
        pos_embed_mode="exact",
        teacher=ClipTeacher(
            config={**tiny_clip, "image_size": 64, "projection_dim": 24},
            teacher_dim=24,
            image_size=64,
        ),
    )
    with pytest.raises(ConfigError, match="target 'pixels'"):
        released_pixel_state_dict(golden["state_dict"], clip)
    with pytest.raises(ConfigError, match="no tensors found"):
        released_pixel_state_dict({"epoch": 3}, golden_module(golden), source="optimizer_only.pth")
    with pytest.raises(ConfigError, match="does not exist"):
        golden_module(golden, released_checkpoint=str(tmp_path / "absent.pth"))


def test_given_masks_are_checked():
    golden = load_golden("itpn_pixel_small.pt")
    module = golden_module(golden)
    with pytest.raises(ValueError, match=r"ids_restore and mask \[2, 16\]"):
        module.shared_step(
            {"image": golden["images"]}, masks=(golden["ids_keep"], golden["ids_restore"][:, :8], golden["mask"])
        )
    wrong = golden["mask"].clone()
    wrong[:, 0] = 1 - wrong[:, 0]
    with pytest.raises(ValueError, match="N - L = 12"):
        module.shared_step({"image": golden["images"]}, masks=(golden["ids_keep"], golden["ids_restore"], wrong))


def test_pos_embed_mode_is_validated():
    kw = dict(img_size=64, embed_dim=64, mlp_depth=1, depth=1, num_heads=2, fpn_dim=32, rpe=False)
    with pytest.raises(ConfigError, match="set it once"):
        mim_encoder(kwargs={**kw, "pos_embed_mode": "exact"}, pos_embed_mode="reference")
    with pytest.raises(ConfigError, match="pos_embed_mode must be one of"):
        mim_encoder(kwargs={**kw, "pos_embed_mode": "smoothed"}, pos_embed_mode="smoothed")
    with pytest.raises(ConfigError, match="needs an itpn_\\* encoder"):
        mim_encoder("beit_base_patch16_224", dict(img_size=64, embed_dim=64, depth=1), pos_embed_mode="reference")


# ---- the recipes ----------------------------------------------------------------------------------------------------
def init_args(config: str) -> dict:
    return load_config(REPO / config)["model"]["init_args"]


@pytest.mark.parametrize(
    "config",
    [
        "configs/itpn/pretrain_base_pixel_400ep.yaml",
        "configs/itpn/pretrain_base_pixel_1600ep.yaml",
        "configs/itpn/pretrain_large_pixel_400ep.yaml",
        "configs/itpn/pretrain_large_pixel_1600ep.yaml",
        "configs/itpn/toy_pixel.yaml",
    ],
)
def test_pixel_pretraining_configs_resample_the_table_as_the_released_code(config):
    assert init_args(config)["encoder"]["init_args"]["pos_embed_mode"] == "reference"


def test_l14_masks_75_patches_as_the_official_command_and_the_98_variant_has_its_own_config():
    official = init_args("configs/itpn/pretrain_large14_clip_l_300ep.yaml")
    ablation = init_args("configs/itpn/pretrain_large14_clip_l_300ep_mask98.yaml")
    assert official["num_mask_patches"] == 75 and ablation["num_mask_patches"] == 98
    assert {k: v for k, v in official.items() if k != "num_mask_patches"} == {
        k: v for k, v in ablation.items() if k != "num_mask_patches"
    }
    rows = yaml.safe_load((REPO / "experiments/tables/itpn.yaml").read_text())["rows"]
    l14 = [row for row in rows if row["label"].startswith("iTPN-L/14")]
    assert [row["pretrain"] for row in l14] == [
        "configs/itpn/pretrain_large14_clip_l_300ep.yaml",
        "configs/itpn/pretrain_large14_clip_l_300ep_mask98.yaml",
    ]
    assert l14[0]["paper"] is not None and l14[1]["paper"] is None  # the 98-patch variant is not in the paper
