"""STT's model and losses (arXiv 2103.16469): the spatial/temporal factorisation, the constraint heads, the loss terms
against hand-computed values and loop references, and fine-tuning from a pre-training checkpoint."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from experiments.errors import ConfigError
from lightning_modules.reid.losses import (
    batch_hard_triplet,
    spatial_constraint,
    stt_loss,
    temporal_attention_divergence,
)
from lightning_modules.reid.stt import SpatioTemporalTransformer, set_last_stride_one

TOY = dict(backbone="resnet18", backbone_kwargs={"channels": (8, 16, 32, 64), "stem_width": 8}, img_size=(64, 32),
           seq_len=3, embed_dim=32, heads=2, spatial_depth=1, temporal_depth=2, global_depth=1, parts=2)  # fmt: skip


def small_model(num_classes: int = 5, **overrides) -> SpatioTemporalTransformer:
    torch.manual_seed(0)
    return SpatioTemporalTransformer(num_classes, **{**TOY, **overrides})


def test_resnet50_last_stride_one_gives_16x8_map_at_256x128():
    import timm

    cnn = timm.create_model("resnet50", num_classes=0, global_pool="")
    assert sum(p.numel() for p in cnn.parameters()) == 23_508_032  # ResNet-50 without its classifier
    set_last_stride_one(cnn)
    with torch.no_grad():
        assert cnn(torch.zeros(1, 3, 256, 128)).shape == (1, 2048, 16, 8)


def test_paper_scale_model_token_counts():
    model = SpatioTemporalTransformer(625, backbone="resnet50")
    assert model.grid == (16, 8)
    assert model.num_tokens() == {"spatial": 129, "temporal": 9, "global": 1025}
    assert model.feature_dim == 1024  # temporal and global class tokens, 512 each


def test_spatial_transformer_stays_within_a_frame_and_temporal_mixes_frames():
    model = small_model().eval()
    clips = torch.randn(2, 3, 3, 64, 32)
    changed = clips.clone()
    changed[:, 2] = torch.randn_like(changed[:, 2])
    with torch.no_grad():
        frame_a, _ = model.encode_frames(clips)
        frame_b, _ = model.encode_frames(changed)
        out_a, out_b = model(clips), model(changed)
    torch.testing.assert_close(frame_a[:, :2], frame_b[:, :2])  # ST: frames 0 and 1 do not see frame 2
    assert (frame_a[:, 2] - frame_b[:, 2]).abs().max() > 1e-3
    assert (out_a["embedding"] - out_b["embedding"]).abs().max() > 1e-3  # TT and GT do


def test_global_transformer_can_be_removed():
    model = small_model(global_depth=0)
    assert model.feature_dim == 32 and not hasattr(model, "global_")


def test_part_features_average_horizontal_stripes():
    model = small_model(parts=2)
    h, w = model.grid  # (4, 2)
    patches = torch.arange(h * w, dtype=torch.float).view(1, 1, h * w, 1).expand(1, 1, h * w, 3)
    parts = model.part_features(patches)
    rows = torch.arange(h * w, dtype=torch.float).view(h, w).mean(1)  # row means 0.5, 2.5, 4.5, 6.5
    torch.testing.assert_close(parts[0, 0, :, 0], torch.stack([rows[:2].mean(), rows[2:].mean()]))


def test_temporal_attention_equals_the_blocks_own_attention():
    model = small_model().eval()
    frames = torch.randn(2, 3, 32)
    last = model.temporal.blocks[-1].attn
    last.fused_attn = False  # the explicit path passes its probabilities through attn_drop
    seen = {}
    hook = last.attn_drop.register_forward_hook(lambda m, inp, out: seen.setdefault("attn", out.detach()))
    with torch.no_grad():
        model.temporal(frames)
        ours = model.temporal.cls_attention(frames)
    hook.remove()
    reference = seen["attn"][:, :, 0, 1:].mean(1)  # class-token row, frames only, head mean
    torch.testing.assert_close(ours, reference)
    assert ours.shape == (2, 3) and (ours.sum(1) < 1).all()  # the rest goes to the class token itself


def test_batch_hard_triplet_matches_a_loop():
    torch.manual_seed(1)
    feats, labels = torch.randn(8, 4), torch.tensor([0, 0, 1, 1, 1, 2, 2, 3])
    expected = []
    for i in range(8):
        pos = [torch.dist(feats[i], feats[j]) for j in range(8) if j != i and labels[j] == labels[i]]
        neg = [torch.dist(feats[i], feats[j]) for j in range(8) if labels[j] != labels[i]]
        if pos and neg:
            expected.append(F.relu(max(pos) - min(neg) + 0.3))
    torch.testing.assert_close(batch_hard_triplet(feats, labels, 0.3), torch.stack(expected).mean(), atol=1e-5,
                               rtol=1e-5)  # fmt: skip


def test_temporal_attention_divergence_bounds():
    uniform = torch.full((2, 4), 0.25)
    one_hot = torch.tensor([[1.0, 0, 0, 0]])
    assert temporal_attention_divergence(uniform).abs() < 1e-6
    torch.testing.assert_close(temporal_attention_divergence(one_hot), torch.tensor(math.log(4)))


def test_spatial_constraint_is_frame_plus_part_cross_entropy():
    torch.manual_seed(2)
    frame_logits, part_logits, labels = torch.randn(2, 3, 5), torch.randn(2, 3, 4, 5), torch.tensor([1, 4])
    frame = sum(F.cross_entropy(frame_logits[b, t][None], labels[b][None]) for b in range(2) for t in range(3)) / 6
    part = sum(F.cross_entropy(part_logits[b, t, p][None], labels[b][None]) for b in range(2) for t in range(3)
               for p in range(4)) / 24  # fmt: skip
    torch.testing.assert_close(spatial_constraint(frame_logits, part_logits, labels, 0.0), frame + part)


def test_stt_loss_terms_and_ablation():
    model = small_model().train()
    clips, labels = torch.randn(4, 3, 3, 64, 32), torch.tensor([0, 0, 1, 1])
    out = model(clips)
    assert out["part_logits"].shape == (4, 3, 2, 5) and out["temporal_attention"].shape == (4, 3)
    terms = stt_loss(out, labels)
    total = terms["id"] + terms["triplet"] + terms["spatial"] + terms["temporal"]
    torch.testing.assert_close(terms["loss"], total)
    assert abs(float(terms["id"].detach()) - math.log(5)) < 0.05  # near-zero classifier init: uniform logits
    bare = stt_loss(out, labels, spatial_weight=0.0, temporal_weight=0.0)
    assert set(bare) == {"id", "triplet", "loss"}
    terms["loss"].backward()
    assert model.part_necks[0].classifier.weight.grad.abs().sum() > 0


def test_too_few_rows_for_parts_is_a_config_error():
    with pytest.raises(ConfigError, match="part stripes"):
        small_model(parts=8)


def test_init_from_keeps_everything_but_the_classifiers(tmp_path):
    from lightning_modules.reid.module import load_stt_weights

    pre = small_model(num_classes=7)
    state = {"state_dict": {f"model.{k}": v for k, v in pre.state_dict().items()}}
    torch.save(state, tmp_path / "pre.ckpt")
    fine = small_model(num_classes=3)
    torch.nn.init.zeros_(fine.project.weight)
    load_stt_weights(fine, str(tmp_path / "pre.ckpt"))
    torch.testing.assert_close(fine.project.weight, pre.project.weight)
    torch.testing.assert_close(fine.temporal.pos_embed, pre.temporal.pos_embed)
    assert fine.neck.classifier.weight.shape == (3, 64)
    other = small_model(num_classes=3, embed_dim=16)
    with pytest.raises(ConfigError, match="does not match"):
        load_stt_weights(other, str(tmp_path / "pre.ckpt"))


def test_the_module_reads_its_network_and_checks_the_identities():
    from types import SimpleNamespace

    from lightning_modules.reid.module import STTModule

    net = small_model(num_classes=7)
    module = STTModule(net, label_smoothing=0.2, channels_last=True)
    assert module.model is net and net.channels_last
    weights = module.state_dict()
    assert all(torch.equal(weights[f"model.{k}"], v) for k, v in net.state_dict().items())  # keys as before
    assert module.hparams.label_smoothing == 0.2 and "net" not in module.hparams  # built in Python: not pickled
    module._trainer = SimpleNamespace(datamodule=SimpleNamespace(num_classes=9))
    with pytest.raises(ConfigError, match=r"model\.init_args\.net\.init_args\.num_classes is 7 but the training "
                                          r"split has 9 identities"):  # fmt: skip
        module.on_fit_start()
    with pytest.raises(TypeError):
        STTModule(net, 0.1)  # every setting after the network is keyword-only


def parse_fit(argv: list[str]):
    """``fit`` parsed as ``python -m experiments fit`` parses it (bases expanded), nothing instantiated."""
    import sys

    from experiments.configs import expand_config_args
    from tests.experiments.test_resolved_configs import fit_parser

    saved = sys.argv
    sys.argv = [saved[0], "fit", *expand_config_args(argv)]
    try:
        return fit_parser().parse_args(sys.argv[1:]).fit
    finally:
        sys.argv = saved


@pytest.mark.parametrize(
    "config,seq_len,override", [("configs/stt/mars.yaml", 8, 4), ("configs/stt/toy_finetune.yaml", 4, 5)]
)
def test_a_command_line_seq_len_and_img_size_reach_the_model_and_the_data(config, seq_len, override, monkeypatch):
    """Issue 26's acceptance test: seq_len and img_size are written once (the network's) and the data section
    interpolates them, so one override on the command line reaches every use."""
    from pathlib import Path

    monkeypatch.chdir(Path(__file__).resolve().parents[3])
    stored = parse_fit(["--config", config])
    net, data = stored.model.init_args.net.init_args, stored.data.init_args
    assert (net.seq_len, data.seq_len) == (seq_len, seq_len)
    assert [data.height, data.width] == list(net.img_size)
    fit = parse_fit(["--config", config, "--model.init_args.net.init_args.seq_len", str(override),
                     "--model.init_args.net.init_args.img_size", "[96, 48]"])  # fmt: skip
    net, data = fit.model.init_args.net.init_args, fit.data.init_args
    assert net.seq_len == override and data.seq_len == override
    assert list(net.img_size) == [96, 48] and (data.height, data.width) == (96, 48)
    assert net.num_classes == stored.model.init_args.net.init_args.num_classes  # the rest is the config's
