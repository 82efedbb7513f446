"""Visformer: sizes against the paper's table, transition models, and round trips of our own weights through the
official checkpoint key layout (state dicts built here from our models, not released checkpoints)."""

import pytest
import timm
import torch
from torch.utils.flop_counter import FlopCounterMode

import lightning_modules  # noqa: F401
from experiments.errors import ConfigError
from lightning_modules.backbones import check_backbone_name, create_backbone, load_checkpoint_file
from lightning_modules.backbones.visformer import TRANSITION_MODELS, checkpoint_filter_fn


def macs_at_224(model) -> float:
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model.eval()(torch.randn(1, 3, 224, 224))
    return counter.get_total_flops() / 2  # the paper's "FLOPs" are multiply-accumulates


@pytest.mark.parametrize(
    "name, paper_params_m, paper_gmacs",
    [("visformer_tiny", 10.3, 1.3), ("visformer_small", 40.2, 4.9)],
)
def test_visformer_matches_paper_params_and_flops(name, paper_params_m, paper_gmacs):
    model = timm.create_model(name)
    params = sum(p.numel() for p in model.parameters())
    assert abs(params / 1e6 - paper_params_m) / paper_params_m < 0.02
    gmacs = macs_at_224(model) / 1e9
    # The paper prints one decimal: Visformer-Ti counts 1.268 GMACs (the official get_visformer_flops.py formula
    # gives the same), which it rounds to 1.3; Visformer-S counts 4.879 (0.4 % from 4.9).
    assert abs(gmacs - paper_gmacs) <= 0.05 + 1e-9
    if name == "visformer_small":
        assert abs(gmacs - paper_gmacs) / paper_gmacs < 0.02


def test_visformer_exact_counts_follow_official_layer_shapes():
    # hand count from the official models.py layer shapes (facts file): 10,321,368 and 40,219,592 parameters
    assert sum(p.numel() for p in timm.create_model("visformer_tiny").parameters()) == 10_321_368
    assert sum(p.numel() for p in timm.create_model("visformer_small").parameters()) == 40_219_592


@pytest.mark.parametrize("name", sorted(TRANSITION_MODELS))
def test_transition_model_builds_and_runs(name):
    model = create_backbone(name, num_classes=7).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, 224, 224))
    assert out.shape == (2, 7) and torch.isfinite(out).all()


def test_transition_models_differ_as_the_paper_describes():
    nets = {n: timm.create_model(f"visformer_net{n}") for n in range(1, 8)}
    assert nets[1].stem is None and nets[2].stem is not None  # net2 adds the conv stem
    assert len(nets[2].stage2) == 12 and len(nets[3].stage1) == len(nets[3].stage2) == len(nets[3].stage3) == 4
    assert isinstance(nets[3].norm, timm.layers.LayerNorm2d) and isinstance(nets[4].norm, torch.nn.BatchNorm2d)
    assert nets[4].stage2[0].mlp.conv2 is None and nets[5].stage2[0].mlp.conv2 is not None
    assert nets[5].stage2[0].mlp.hidden_features == 384 * 5 // 6  # keeps FLOPs with the 3x3 conv
    assert nets[5].pos_embed2 is not None and nets[6].pos_embed2 is None
    assert all(not hasattr(block, "attn") or block.attn is None for block in nets[7].stage2)
    assert (len(nets[7].stage1), len(nets[7].stage2), len(nets[7].stage3)) == (6, 7, 7)
    # net1 is DeiT-S without its class token: 22.0M parameters (DeiT-S: 22.05M)
    assert abs(sum(p.numel() for p in nets[1].parameters()) / 1e6 - 22.0) < 0.1


def state_dict_in_official_layout(model) -> dict:
    """Our model's own weights rewritten into the key layout danczs/Visformer's main.py saves (BatchNorm keys under an
    extra `.bn.`, wrapped in `model`): the first half of a round trip, not a released checkpoint."""
    bn_prefixes = {name for name, m in model.named_modules() if isinstance(m, torch.nn.BatchNorm2d)}
    layout = {}
    for key, value in model.state_dict().items():
        prefix, _, leaf = key.rpartition(".")
        layout[f"{prefix}.bn.{leaf}" if prefix in bn_prefixes else key] = value.clone()
    return {"model": layout, "epoch": 299, "optimizer": {}, "args": None}


def test_state_dict_round_trips_through_the_official_key_layout_with_same_outputs(tmp_path):
    """Our Visformer-S weights, written in the official key layout (205 keys) and read back through
    ``checkpoint_filter_fn`` (directly and from a file via ``create_backbone(pretrained=...)``), give the source
    model's outputs: a round trip of our own state dict, which checks the key mapping, not equality with released
    weights."""
    torch.manual_seed(0)
    source = timm.create_model("visformer_small").eval()
    with torch.no_grad():  # non-trivial BN statistics so that a dropped key would change outputs
        for m in source.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 1.5)
    ckpt = state_dict_in_official_layout(source)
    keys = ckpt["model"]
    assert len(keys) == 205 and "stem.1.bn.running_mean" in keys and "norm.bn.weight" in keys
    assert "stage1.0.norm2.bn.weight" in keys and keys["stage1.0.mlp.conv2.weight"].shape == (384, 48, 3, 3)

    target = timm.create_model("visformer_small").eval()
    mapped = checkpoint_filter_fn(ckpt, target)
    missing, unexpected = target.load_state_dict(mapped, strict=True)
    assert not missing and not unexpected
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(target(x), source(x))

    path = tmp_path / "visformer_small.pth"
    torch.save(ckpt, path)
    loaded = create_backbone("visformer_small", pretrained=str(path)).eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), source(x))


def test_round_trip_reshapes_channel_layernorm_stored_in_the_official_layout():
    """Our net3 weights with the final channel LayerNorm weight stored as the official code stores it (``[C, 1, 1]``)
    come back through ``checkpoint_filter_fn`` with our shape."""
    model = timm.create_model("visformer_net3")
    layout = {k: (v.reshape(-1, 1, 1) if k == "norm.weight" else v) for k, v in model.state_dict().items()}
    mapped = checkpoint_filter_fn({"model": layout}, model)
    assert mapped["norm.weight"].shape == model.norm.weight.shape


def test_round_trip_in_the_official_layout_into_other_num_classes_keeps_backbone(tmp_path):
    """Our Visformer-Ti weights saved in the official key layout load into a 10-class model: the backbone weights
    round-trip, the head is new."""
    source = timm.create_model("visformer_tiny")
    path = tmp_path / "tiny.pth"
    torch.save(state_dict_in_official_layout(source), path)
    model = create_backbone("visformer_tiny", num_classes=10)
    load_checkpoint_file(model, str(path))
    torch.testing.assert_close(model.stem[0].weight, source.stem[0].weight)
    assert model.head.weight.shape == (10, 384)


def test_unknown_backbone_lists_close_matches():
    with pytest.raises(ConfigError, match="visformer_small"):
        check_backbone_name("visformer_smal")
