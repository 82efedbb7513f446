"""Frozen CLIP teacher (iTPN / MVP target) on a tiny randomly initialised CLIP vision tower; nothing is downloaded."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from experiments.errors import ConfigError
from lightning_modules.mim.teacher import CLIP_MEAN, CLIP_STD, ClipTeacher

TINY = dict(
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=2,
    patch_size=4,
    image_size=32,
    projection_dim=24,
)


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")


def tiny(**kwargs) -> ClipTeacher:
    options = dict(config=TINY, teacher_dim=24, image_size=32)
    options.update(kwargs)
    return ClipTeacher(**options)


def images(batch: int = 3, size: int = 32, seed: int = 0) -> torch.Tensor:
    return torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(seed))


def test_output_shape_and_layernorm_statistics():
    teacher = tiny()
    assert (teacher.out_dim, teacher.grid, teacher.num_tokens) == (24, 8, 64)
    out = teacher(images())
    assert out.shape == (3, 64, 24) and out.dtype == torch.float32
    torch.testing.assert_close(out.mean(dim=-1), torch.zeros(3, 64), atol=1e-5, rtol=0)
    torch.testing.assert_close(out.var(dim=-1, unbiased=False), torch.ones(3, 64), atol=1e-3, rtol=0)
    assert not torch.allclose(out[:, 0], out[:, 1])  # tokens differ


def test_random_teacher_is_deterministic_and_leaves_rng_alone():
    torch.manual_seed(123)
    expected_next = torch.rand(4)
    torch.manual_seed(123)
    first = tiny()
    assert torch.equal(torch.rand(4), expected_next)  # building the teacher did not consume the global RNG
    second = tiny()
    for (name, a), (_, b) in zip(first.state_dict().items(), second.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
    x = images()
    assert torch.equal(first(x), second(x))
    other = tiny(seed=1)
    assert not torch.equal(other.model.visual_projection.weight, first.model.visual_projection.weight)


def test_teacher_dim_mismatch_names_both_numbers():
    with pytest.raises(ConfigError) as info:
        tiny(teacher_dim=512)
    message = str(info.value)
    assert "24" in message and "512" in message and "teacher_dim" in message


@pytest.mark.parametrize(
    "kwargs, fragment",
    [
        (dict(config=None), "name_or_path .* or config .*; both are null"),
        (dict(config=None, name_or_path="null"), "both are null"),
        (dict(input_scaling="imagenet"), "input_scaling"),
        (dict(image_size=64), "image_size"),
        (dict(config={**TINY, "hidden_size": 30, "num_attention_heads": 4}), "not a valid CLIPVisionConfig"),
    ],
)
def test_bad_configuration_raises_config_error(kwargs, fragment):
    with pytest.raises(ConfigError, match=fragment):
        tiny(**kwargs)


def test_missing_checkpoint_offline_is_config_error(tmp_path):
    with pytest.raises(ConfigError, match="name_or_path"):
        ClipTeacher(name_or_path=str(tmp_path / "no-such-clip"), teacher_dim=24, image_size=32)


def test_loads_a_saved_checkpoint_folder(tmp_path):
    teacher = tiny(seed=3)
    teacher.model.save_pretrained(tmp_path / "clip")
    loaded = ClipTeacher(name_or_path=str(tmp_path / "clip"), teacher_dim=24, image_size=32)
    x = images()
    torch.testing.assert_close(loaded(x), teacher(x))
    # a config beside name_or_path (the toy configs' fallback for name_or_path null) is not used
    with_config = ClipTeacher(name_or_path=str(tmp_path / "clip"), config=TINY, teacher_dim=24, image_size=32, seed=7)
    torch.testing.assert_close(with_config(x), teacher(x))


def test_a_missing_toy_teacher_names_the_class_that_writes_it(tmp_path):
    missing = str(tmp_path / "toy_clip_teacher")
    with pytest.raises(ConfigError, match="experiments.toy_teacher.ToyClipTeacher"):
        ClipTeacher(name_or_path=missing, teacher_dim=24, image_size=32, toy_data_root=str(tmp_path / "shapes"))


def test_frozen_and_always_eval():
    teacher = tiny(config={**TINY, "attention_dropout": 0.5, "dropout": 0.5})
    assert all(not p.requires_grad for p in teacher.parameters())
    parent = torch.nn.Sequential(teacher)
    parent.train()
    assert parent.training
    assert not teacher.training and not any(m.training for m in teacher.modules())
    assert teacher.train(True) is teacher and not teacher.training
    x = images()
    assert torch.equal(teacher(x), teacher(x))  # dropout stays off
    out = teacher(x.requires_grad_(True))
    assert not out.requires_grad


def manual_target(teacher: ClipTeacher, x: torch.Tensor, scaling: str) -> torch.Tensor:
    mean = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    if scaling == "beit":
        x = ((x + 1) * 127.5).clamp(0, 255) / 255
    pixels = (x - mean) / std
    with torch.no_grad():
        hidden = teacher.model.vision_model(pixel_values=pixels).last_hidden_state
        tokens = teacher.model.vision_model.post_layernorm(hidden[:, 1:])
        projected = teacher.model.visual_projection(tokens)
    return F.layer_norm(projected, (projected.shape[-1],))


def test_scalings_match_manual_computation_and_differ():
    beit, clip = tiny(input_scaling="beit"), tiny(input_scaling="clip")
    x = images(2)
    out_beit, out_clip = beit(x), clip(x)
    torch.testing.assert_close(out_beit, manual_target(beit, x, "beit"))
    torch.testing.assert_close(out_clip, manual_target(clip, x, "clip"))
    assert (out_beit - out_clip).abs().max() > 1e-2
    # The BEiT-v2 quirk: [0, 1] inputs are seen as [0.5, 1], so black and mid-grey images differ only through it.
    torch.testing.assert_close(beit(torch.zeros(1, 3, 32, 32)), clip(torch.full((1, 3, 32, 32), 0.5)))


def test_other_resolutions_are_resized():
    teacher = tiny()
    x = images(2, size=48)
    out = teacher(x)
    assert out.shape == (2, 64, 24)
    resized = F.interpolate(x, size=(32, 32), mode="bicubic", align_corners=False, antialias=True).clamp(0, 1)
    torch.testing.assert_close(out, teacher(resized))
    # A constant image stays constant through the resize, so its targets do not depend on the input resolution.
    grey = torch.full((1, 3, 20, 20), 0.3)
    torch.testing.assert_close(teacher(grey), teacher(torch.full((1, 3, 32, 32), 0.3)), atol=1e-5, rtol=1e-5)


def test_rejects_wrong_input_shape():
    with pytest.raises(ValueError, match="B, 3, H, W"):
        tiny()(torch.rand(2, 1, 32, 32))


def test_saved_tower_runs_at_another_resolution_with_interpolated_positions(tmp_path, monkeypatch):
    """CLIP-L/14 at 196 px gives the 14x14 grid of a 224-px student: a saved tower at another size interpolates its
    position table (as the official wrapper does) instead of refusing."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    config = CLIPVisionConfig(**{**TINY, "image_size": 32, "patch_size": 4})
    torch.manual_seed(0)
    CLIPVisionModelWithProjection(config).save_pretrained(tmp_path / "clip")
    native = ClipTeacher(name_or_path=str(tmp_path / "clip"), teacher_dim=24, image_size=32)
    smaller = ClipTeacher(name_or_path=str(tmp_path / "clip"), teacher_dim=24, image_size=24)
    images = torch.rand(2, 3, 24, 24)
    assert smaller.grid == 6 and smaller(images).shape == (2, 36, 24)
    assert native.grid == 8 and native(images).shape == (2, 64, 24)  # resized to its own 32 px instead


def test_toy_teacher_folders_written_before_the_split_still_count_as_written(tmp_path):
    """The toy teacher's folder records the same generator and options as before the writer moved out of the task:
    a folder written then is used as it is, one written from other shapes is refused."""
    import json

    from datamodules.toy import MARKER
    from experiments.errors import DataError
    from experiments.toy_teacher import ensure_toy_clip_teacher

    folder = tmp_path / "toy_clip_teacher"
    folder.mkdir()
    record = {"generator": "datamodules.toy.clip_teacher.write_toy_clip_teacher", "options": {"data_root": "shapes"}}
    (folder / MARKER).write_text(json.dumps(record))
    assert ensure_toy_clip_teacher(folder, "shapes") == folder
    assert sorted(p.name for p in folder.iterdir()) == [MARKER]  # nothing was trained
    with pytest.raises(DataError, match="written with"):
        ensure_toy_clip_teacher(folder, "other_shapes")


def test_toy_teacher_with_a_null_path_is_the_random_tower_and_writes_nothing(tmp_path):
    from experiments.toy_teacher import ToyClipTeacher

    teacher = ToyClipTeacher(
        name_or_path="null", config=TINY, teacher_dim=24, image_size=32, toy_data_root=str(tmp_path / "shapes")
    )
    assert list(tmp_path.iterdir()) == []
    for (name, a), (_, b) in zip(teacher.state_dict().items(), tiny().state_dict().items(), strict=True):
        assert torch.equal(a, b), name
