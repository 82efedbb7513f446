"""MaskedImageModeling: which positions each recipe's loss covers, the heads' wiring, bad input."""

from __future__ import annotations

import pytest
import torch

import lightning_modules.mim.losses as mim_losses
import lightning_modules.mim.module as mim_module
from experiments.errors import ConfigError
from lightning_modules.classification.probe import fit_linear_probe
from lightning_modules.mim import ClipTeacher, MaskedImageModeling, mim_encoder
from lightning_modules.mim.losses import clip_feature_terms, feature_loss, patchify, pixel_loss, unpatchify
from lightning_modules.mim.module import patch_grid
from lightning_modules.mim.teacher import none_if_null

TOY = dict(img_size=64, embed_dim=64, mlp_depth=1, depth=4, num_heads=2, fpn_dim=32)
TINY_CLIP = dict(
    hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, patch_size=16, image_size=64
)


def teacher(dim: int = 24, **overrides) -> ClipTeacher:
    config = {**TINY_CLIP, "projection_dim": 24, **overrides}
    return ClipTeacher(config=config, teacher_dim=dim, image_size=64)


def vit(depth: int = 2) -> torch.nn.Module:
    return mim_encoder("beit_base_patch16_224", dict(img_size=64, embed_dim=64, depth=depth, num_heads=2))


def pixel_module(**kwargs) -> MaskedImageModeling:
    torch.manual_seed(0)
    encoder = mim_encoder(kwargs=TOY)
    return MaskedImageModeling(
        encoder, decoder_dim=64, decoder_depth=1, decoder_heads=4, **{"mask_ratio": 0.75, **kwargs}
    )


def clip_module(encoder_kwargs: dict | None = None, **kwargs) -> MaskedImageModeling:
    torch.manual_seed(0)
    encoder = mim_encoder(kwargs=encoder_kwargs or TOY, init_values=0.1)
    args = dict(target="clip", mask_type="block", num_mask_patches=6, min_mask_patches=2)
    return MaskedImageModeling(encoder, **{**args, "teacher": teacher(), **kwargs})


def mvp_module() -> MaskedImageModeling:
    torch.manual_seed(0)
    return MaskedImageModeling(
        vit(), target="clip", mask_type="block", num_mask_patches=6, min_mask_patches=2, teacher=teacher(),
        feature_loss="cosine", supervise="masked",
    )  # fmt: skip


def test_patchify_round_trip_and_order():
    x = torch.arange(2 * 3 * 32 * 32, dtype=torch.float32).reshape(2, 3, 32, 32)
    p = patchify(x, 16)
    assert p.shape == (2, 4, 16 * 16 * 3)
    assert p[0, 1, :3].tolist() == [x[0, 0, 0, 16].item(), x[0, 1, 0, 16].item(), x[0, 2, 0, 16].item()]
    torch.testing.assert_close(unpatchify(p, 16, (2, 2)), x)


def test_pixel_loss_hand_computed_and_masked_only():
    target = torch.tensor([[[1.0, 3.0], [2.0, 2.0], [0.0, 4.0]]])  # B=1, N=3, D=2
    pred = torch.zeros(1, 3, 2)
    mask = torch.tensor([[True, False, True]])
    # without normalisation: mean over D of squares, then over masked patches: ((1+9)/2 + (0+16)/2) / 2 = 6.5
    assert pixel_loss(pred, target, mask, norm_pix=False).item() == pytest.approx(6.5)
    # normalised: patch 0 -> (-1, 1)/sqrt(2 + eps), patch 2 -> (-1, 1)*2/sqrt(8 + eps); squares average to ~0.5 each
    assert pixel_loss(pred, target, mask, norm_pix=True).item() == pytest.approx(0.5, rel=1e-5)
    changed = pred.clone()
    changed[0, 1] = 100.0  # a visible patch: not in the loss
    assert pixel_loss(changed, target, mask, norm_pix=False).item() == pytest.approx(6.5)


def test_feature_losses_hand_computed():
    pred = torch.tensor([[[1.0, 0.0], [0.0, 3.0]]])
    target = torch.tensor([[[1.0, 0.0], [2.0, 0.0]]])
    # SmoothL1(beta 1) per element: 0, 0, 0.5*... |0-2|=2 -> 1.5, |3-0|=3 -> 2.5; mean = 1.0
    assert feature_loss(pred, target, "smooth_l1").item() == pytest.approx(1.0)
    assert feature_loss(pred, target, "cosine").item() == pytest.approx(0.5)  # (0 + 1) / 2
    assert feature_loss(pred, target, "cosine", mask=torch.tensor([[False, True]])).item() == pytest.approx(1.0)


def test_pixel_recipe_drops_75_percent_and_scores_masked_patches_only(monkeypatch):
    module = pixel_module()
    seen = {}

    def spy(pred, target, mask, norm_pix):
        seen.update(pred=pred, mask=mask)
        return pixel_loss(pred, target, mask, norm_pix)

    monkeypatch.setattr(mim_module, "pixel_loss", spy)
    calls = []
    original = module.encoder.forward_tokens
    module.encoder.forward_tokens = lambda x, **kw: calls.append(kw["ids_keep"].shape) or original(x, **kw)
    out = module.shared_step({"image": torch.randn(3, 3, 64, 64)}, seed=0)
    assert calls == [(3, 4)]  # the encoder saw 4 of 16 patches per image
    assert seen["mask"].sum(1).tolist() == [12, 12, 12] and seen["pred"].shape == (3, 16, 768)
    assert torch.isfinite(out["loss"])


def test_clip_recipe_scores_all_tokens_and_mvp_the_masked_ones(monkeypatch):
    masks = []

    def spy(pred, target, kind, mask=None):
        masks.append(mask)
        return feature_loss(pred, target, kind, mask)

    monkeypatch.setattr(mim_module, "feature_loss", spy)
    monkeypatch.setattr(mim_losses, "feature_loss", spy)
    itpn = clip_module()
    itpn.shared_step({"image": torch.rand(2, 3, 64, 64)}, seed=0)
    assert masks == [None, None]  # main and auxiliary head, every token
    masks.clear()
    mvp = mvp_module()
    mvp.shared_step({"image": torch.rand(2, 3, 64, 64)}, seed=0)
    assert len(masks) == 1 and masks[0].shape == (2, 16) and masks[0].sum(1).tolist() == [6, 6]


def test_clip_mask_token_enters_at_masked_positions_only():
    module = clip_module().eval()
    x = torch.rand(1, 3, 64, 64)
    mask = torch.zeros(1, 16, dtype=torch.bool)
    mask[0, 5] = True
    with torch.no_grad():
        a = module.encoder.forward_tokens(x, bool_masked_pos=mask, mask_token=module.mask_token)
        module.mask_token.add_(1.0)
        b = module.encoder.forward_tokens(x, bool_masked_pos=mask, mask_token=module.mask_token)
        none = module.encoder.forward_tokens(x, bool_masked_pos=torch.zeros_like(mask), mask_token=module.mask_token)
    assert not torch.allclose(a.tokens, b.tokens)  # the token reaches the output through attention
    torch.testing.assert_close(a.laterals[0], none.laterals[0])  # stages 1-2 see the unmasked image (official)


@pytest.mark.parametrize("depth, index", [(4, 3), (8, 6), (24, 18), (40, 30)])
def test_auxiliary_head_reads_block_three_quarters_deep(depth, index):
    if depth > 8:
        with torch.device("meta"):
            module = MaskedImageModeling(
                mim_encoder(kwargs={**TOY, "depth": depth}), target="clip", mask_type="block", teacher=teacher(),
                num_mask_patches=6, min_mask_patches=2,
            )  # fmt: skip
    else:
        module = clip_module(encoder_kwargs={**TOY, "depth": depth})
    assert module.aux_index == index and len(module.head.cls_pt_layers) == 2


def test_teacher_is_frozen_and_not_checkpointed():
    module = clip_module()
    loss = module.shared_step({"image": torch.rand(2, 3, 64, 64)})["loss"]
    loss.backward()
    assert module.mask_token.grad is not None and module.encoder.patch_embed.proj.weight.grad is not None
    assert all(p.grad is None and not p.requires_grad for p in module.teacher.parameters())
    assert not any(k.startswith("teacher") for k in module.state_dict())
    assert not any(p is q for p in module.parameters() for q in module.teacher.parameters())


def test_teacher_width_mismatch_names_both_numbers_and_the_option():
    with pytest.raises(ConfigError) as err:
        clip_module(teacher=teacher(dim=32))
    assert "24" in str(err.value) and "32" in str(err.value) and "teacher_dim" in str(err.value)


def test_teacher_grid_must_match_the_student():
    with pytest.raises(ConfigError, match="token grid"):
        clip_module(teacher=teacher(patch_size=8))


def test_recipe_and_encoder_mismatches_are_config_errors():
    with pytest.raises(ConfigError, match="pixel recipe"):
        MaskedImageModeling(vit(depth=1))
    with pytest.raises(ConfigError, match="mask_type 'block'"):
        clip_module(mask_type="random")
    with pytest.raises(ConfigError, match="unknown backbone"):
        mim_encoder("itpn_bsae")
    with pytest.raises(ConfigError, match="target 'pixels' takes no teacher; remove model.init_args.teacher"):
        pixel_module(teacher=teacher())
    with pytest.raises(ConfigError, match="target 'clip' needs model.init_args.teacher"):
        clip_module(teacher=None)
    with pytest.raises(ConfigError, match="needs an itpn_\\* encoder"):
        mim_encoder("beit_base_patch16_224", dict(img_size=64, embed_dim=64, depth=1), pos_embed_mode="reference")


def test_visualisation_rows_are_images():
    module = pixel_module()
    batch = {"image": torch.randn(4, 3, 64, 64)}
    grid = module.visualise(batch, module.shared_step(batch, seed=0))
    assert grid.shape == (16, 3, 64, 64) and grid.min() >= 0 and grid.max() <= 1
    masked_row = grid[4:8]
    # masked patches are painted grey (0.5): 12 of 16 patches per image
    grey = (masked_row == 0.5).all(dim=1).float().mean().item()
    assert grey == pytest.approx(0.75, abs=0.01)


def test_linear_probe_solver_on_separable_features():
    torch.manual_seed(0)
    centres = torch.randn(3, 8) * 4
    y = torch.arange(300) % 3
    x = centres[y] + torch.randn(300, 8) * 0.5
    result = fit_linear_probe(x[:200], y[:200], x[200:], y[200:])
    assert result.train_accuracy == 1.0 and result.test_accuracy > 0.97
    shuffled = fit_linear_probe(x[:200], y[:200][torch.randperm(200)], x[200:], y[200:])
    assert shuffled.test_accuracy < 0.6


@pytest.mark.parametrize("recipe", ["pixel", "clip", "mvp"])
def test_every_trainable_parameter_gets_a_gradient(recipe):
    """DDP without find_unused_parameters needs it: no module of the model may sit unused by the loss."""
    if recipe == "pixel":
        module = pixel_module()
    elif recipe == "clip":
        module = clip_module()
    else:
        module = mvp_module()
    module.shared_step({"image": torch.rand(2, 3, 64, 64)}, seed=0)["loss"].backward()
    unused = [n for n, p in module.named_parameters() if p.requires_grad and p.grad is None]
    assert unused == []


def test_the_teacher_reads_a_command_line_null_as_none():
    assert [none_if_null(v) for v in ("None", "null", " ", None)] == [None] * 4
    assert none_if_null("openai/clip-vit-base-patch16") == "openai/clip-vit-base-patch16"
    # name_or_path 'null' from the command line: the random tower of config, toy_data_root 'None' ignored
    random_tower = ClipTeacher(
        name_or_path="null", config={**TINY_CLIP, "projection_dim": 24}, teacher_dim=24, image_size=64,
        toy_data_root="None",
    )  # fmt: skip
    assert random_tower.toy_data_root is None and random_tower.out_dim == 24


def test_clip_feature_terms_add_the_weighted_auxiliary_loss():
    target = torch.tensor([[[1.0, 0.0], [2.0, 0.0]]])
    pred = torch.tensor([[[1.0, 0.0], [0.0, 3.0]]])  # SmoothL1 mean 1.0 (test above)
    aux = torch.zeros(1, 2, 2)  # |1| -> 0.5, |2| -> 1.5: mean (0.5 + 0 + 1.5 + 0) / 4 = 0.5
    terms = clip_feature_terms(pred, aux, target, "smooth_l1", None, aux_weight=0.5)
    assert terms["loss_main"].item() == pytest.approx(1.0) and terms["loss_aux"].item() == pytest.approx(0.5)
    assert terms["loss"].item() == pytest.approx(1.0 + 0.5 * 0.5)
    alone = clip_feature_terms(pred, None, target, "smooth_l1")
    assert set(alone) == {"loss_main", "loss"} and alone["loss"].item() == pytest.approx(1.0)


def test_patch_size_and_grid_come_from_the_injected_encoder():
    assert patch_grid(mim_encoder(kwargs=TOY)) == (16, 4)
    assert patch_grid(vit()) == (16, 4)
    assert patch_grid(mim_encoder(kwargs={**TOY, "img_size": 96})) == (16, 6)


def test_auxiliary_blocks_continue_the_encoders_drop_path_and_layer_scale():
    torch.manual_seed(0)
    encoder = mim_encoder(kwargs={**TOY, "depth": 4}, drop_path_rate=0.3, init_values=0.1)
    module = MaskedImageModeling(
        encoder, target="clip", mask_type="block", num_mask_patches=6, min_mask_patches=2, teacher=teacher()
    )
    # the official list: linspace(0, 0.3) over 1 + 1 + 4 blocks, the auxiliary blocks from block 2 + int(0.75 * 4),
    # padded with the last block's rate (the official code pads with drop_path_rate: the same rate, here as float32)
    rates = torch.linspace(0, 0.3, 6).tolist()
    expected = (rates + [rates[-1]] * 2)[5:7]
    assert [blk.drop_path.drop_prob for blk in module.head.cls_pt_layers] == expected
    for blk in module.head.cls_pt_layers:
        assert torch.equal(blk.gamma_1, torch.full_like(blk.gamma_1, 0.1))
    plain = MaskedImageModeling(
        mim_encoder(kwargs=TOY), target="clip", mask_type="block", num_mask_patches=6, min_mask_patches=2,
        teacher=teacher(),
    )  # fmt: skip
    assert all(blk.gamma_1 is None for blk in plain.head.cls_pt_layers)


@pytest.mark.parametrize("make", [pixel_module, clip_module], ids=["random", "block"])
def test_evaluation_masks_follow_the_sample_index_not_the_batch(make):
    """Validation under DDP reads every other sample per process: a sample's mask must depend on its dataset index
    only, so that the batch [3, 8] and the batches [3] and [8] give the same masks (and 2 processes equal 1)."""
    module = make()
    seed = module.eval_seed({"index": torch.tensor([3, 8])}, batch_idx=5)
    assert seed.tolist() == [3, 8] and module.eval_seed({}, batch_idx=5) == 5
    pair = module._masks(2, "cpu", torch.tensor([3, 8]))
    alone = [module._masks(1, "cpu", torch.tensor([i])) for i in (3, 8)]
    mask = pair[-1] if isinstance(pair, tuple) else pair
    masks_alone = [m[-1] if isinstance(m, tuple) else m for m in alone]
    assert torch.equal(mask, torch.cat(masks_alone))
    assert not torch.equal(mask[0], mask[1])  # two samples, two masks
    if isinstance(pair, tuple):  # the pixel recipe's ids_keep / ids_restore follow the same rows
        for got, *rows in zip(pair, *alone, strict=True):
            assert torch.equal(got, torch.cat(rows))
