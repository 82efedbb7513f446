"""Starting weights (issue 23): a hub id fails at once offline, naming the key; a local timm-layout file loads."""

from __future__ import annotations

import time

import pytest
import timm
import torch

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
