"""Starting weights (issue 23): a hub id fails at once offline, naming the key; a local timm-layout file loads."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import timm
import torch

from experiments.configs import run_config_files
from experiments.errors import ConfigError
from lightning_modules.backbones import create_backbone


def test_offline_hub_id_fails_at_once_naming_the_key(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.perf_counter()
    with pytest.raises(ConfigError) as info:
        create_backbone("resnet18", "timm/not-a-cached-model.test", weights_key="model.init_args.pretrained")
    assert time.perf_counter() - start < 10
    message = str(info.value)
    assert "\\n" not in message and message.count("\n") == 0
    assert "model.init_args.pretrained is the hub id 'timm/not-a-cached-model.test'" in message
    assert "local file of resnet18 weights in timm's layout" in message


def test_a_local_file_in_timms_layout_loads_into_the_backbone(tmp_path):
    torch.manual_seed(0)
    source = timm.create_model("resnet18", num_classes=1000)
    path = tmp_path / "resnet18.pth"
    torch.save(source.state_dict(), path)  # timm's layout: a plain state dict with its classifier
    loaded = create_backbone("resnet18", str(path), num_classes=0)
    fresh = create_backbone("resnet18", None, num_classes=0)
    for key, value in loaded.state_dict().items():
        assert torch.equal(value, source.state_dict()[key]), key
    assert not torch.equal(fresh.conv1.weight, source.conv1.weight)  # so the equality above is the loading's doing


CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def paper_configs() -> list[Path]:
    """Every non-toy run config under configs/ (sweep search spaces are not run configs)."""
    return [p for p in run_config_files(CONFIGS) if "toy" not in p.stem and p.parent.name != "sweeps"]


def header(path: Path) -> str:
    """The leading comment block of a config, joined (the text before its first YAML line)."""
    lines = []
    for line in path.read_text().splitlines():
        if not line.startswith("#"):
            break
        lines.append(line.lstrip("# ").rstrip())
    return " ".join(lines)


@pytest.mark.parametrize("path", paper_configs(), ids=lambda p: str(p.relative_to(CONFIGS)))
def test_every_paper_config_names_its_starting_weights(path):
    text = header(path)
    assert "Starting weights: " in text, f"{path}: its header has no '# Starting weights: ...' line"
    statement = text.split("Starting weights: ", 1)[1]
    assert len(statement.split()) >= 6, f"{path}: say what the run starts from and the key that sets it"
    if statement.lower().startswith("none"):
        assert "from scratch" in statement, f"{path}: 'none' must say that the paper trains from scratch"


def test_a_paper_config_naming_a_hub_id_fails_offline_with_one_line(monkeypatch, capfd, tmp_path):
    """STT's synthetic pre-training starts from ImageNet ResNet-50 weights named by hub id: offline and not cached,
    ``fit`` stops before any data is touched, with the one-line message (exit code 2)."""
    from experiments.__main__ import main

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(CONFIGS.parent)
    start = time.perf_counter()
    try:
        code = main(["fit", "--config", "configs/stt/synthetic_pretrain.yaml", "--runs_dir", str(tmp_path)])
    except SystemExit as exit_:
        code = exit_.code
    elapsed = time.perf_counter() - start
    err = capfd.readouterr().err
    assert code == 2
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1
    assert "model.init_args.net.init_args.pretrained is the hub id 'timm/resnet50.tv_in1k'" in lines[0]
    assert "Traceback" not in err
    assert elapsed < 10  # Lightning is already imported in this process: the check itself is immediate


def test_tel_frame_backbone_weights_name_their_key_offline(monkeypatch):
    from lightning_modules.emotion.dcin import DCIN

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ConfigError, match=r"^model\.init_args\.net\.init_args\.visual_pretrained is the hub id "
                                          r"'timm/not-cached\.x'"):  # fmt: skip
        DCIN(num_classes=4, modalities="video", visual_backbone="resnet10t", visual_pretrained="timm/not-cached.x")


def test_tel_from_feature_shards_needs_no_frame_weights(monkeypatch):
    """With visual_dim set the module reads feature shards: the frame backbone (and its hub weights) belong to
    `data extract`, so an offline run from shards does not stop at visual_pretrained."""
    from lightning_modules.emotion.dcin import DCIN

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    net = DCIN(num_classes=4, modalities="video", visual_backbone="resnet10t", visual_pretrained="timm/not-cached.x",
               visual_dim=24)  # fmt: skip
    assert net.backbone is None and net.video_stream.inp[0].in_features == 24
