"""``python -m experiments smoke`` (issue 27): a config that trains passes with its validation metric; a config broken
on purpose (an image size its model cannot take) fails with the config's name and the error; the stand-ins cover
every external weight the paper configs name. ``make smoke-paper`` (every paper config) is the slow test
``test_smoke_paper_slow.py``."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
import yaml

from experiments import smoke
from experiments.configs import load_config

REPO = Path(__file__).resolve().parents[2]
TOY = "configs/visformer/toy.yaml"


def test_a_config_that_trains_passes_with_its_validation_metric(monkeypatch, capsys):
    monkeypatch.chdir(REPO)
    assert smoke.main(["--config", TOY]) == 0
    out = capsys.readouterr().out
    line = next(line for line in out.splitlines() if line.startswith("[1/1]"))
    assert line.startswith(f"[1/1] pass {TOY}") and "val/top1" in line  # the module's monitored metric


def test_a_config_broken_on_purpose_fails_with_its_name_and_the_error(tmp_path, monkeypatch, capsys):
    """The toy Visformer is built for 64 px images: at 48 px its stage-1 patch embedding (after the stride-2 stem)
    gets 24 px where it expects 32."""
    monkeypatch.chdir(REPO)
    broken = tmp_path / "visformer_wrong_size.yaml"
    broken.write_text(yaml.safe_dump({"base": str(REPO / TOY), "data": {"init_args": {"img_size": 48}}}))
    assert smoke.main(["--config", str(broken), "--markdown", str(tmp_path / "table.md")]) == 1
    out = capsys.readouterr().out
    line = next(line for line in out.splitlines() if line.startswith("[1/1]"))
    assert line.startswith(f"[1/1] FAIL {broken}")
    assert "Input height (24) doesn't match model (32)" in line, line  # timm's check, after the 2x2 stem
    table = (tmp_path / "table.md").read_text()
    assert smoke.SECTION in table and f"| {broken} | FAIL |" in table and "0 of 1 passed" in table


def test_every_hub_id_and_external_weight_of_the_paper_configs_gets_a_stand_in():
    """A new Hugging Face id in a config must be added to HF_SHAPES (else smoke would download it); runs'
    checkpoints, timm ids and files become random weights (null)."""
    for config in smoke.paper_configs():
        merged = load_config(str(REPO / config))
        overrides = smoke.standin_overrides(merged)  # raises KeyError for an unknown id
        keys = overrides[::2]
        for key, value in smoke._leaves(merged["model"], "model"):
            name = key.rsplit(".", 1)[-1]
            if name in smoke.WEIGHT_KEYS and value not in (None, False, ""):
                assert f"--{key}" in keys, f"{config}: {key} = {value} is not replaced"


def test_a_hub_id_becomes_a_random_tower_of_its_published_shape():
    config = {"model": {"init_args": {"teacher": {"class_path": "x", "init_args": {
        "name_or_path": "openai/clip-vit-large-patch14"}}}}}  # fmt: skip
    overrides = smoke.standin_overrides(config)
    assert overrides[:2] == ["--model.init_args.teacher.init_args.name_or_path", "null"]
    assert overrides[2] == "--model.init_args.teacher.init_args.config"
    shape = yaml.safe_load(overrides[3])
    assert shape["hidden_size"] == 1024 and shape["num_hidden_layers"] == 24 and shape["patch_size"] == 14
    with pytest.raises(KeyError, match="HF_SHAPES"):
        smoke.standin_overrides({"model": {"init_args": {"clip": {"init_args": {"name_or_path": "someone/unknown"}}}}})


def test_data_is_swapped_for_the_synthetic_set_with_a_batch_of_two(tmp_path):
    config = {"data": {"init_args": {"dataset": "mars", "batch_size": 32, "num_instances": 4, "num_workers": 8,
                                     "eval_batch_size": 16, "test_dataset": "duke"}}}  # fmt: skip
    args = smoke.data_overrides(config, str(tmp_path))
    pairs = dict(zip(args[::2], args[1::2], strict=True))
    assert pairs["--data.init_args.dataset"] == "toy" and pairs["--data.init_args.test_dataset"] == "toy"
    assert pairs["--data.init_args.batch_size"] == "8"  # P x K: two identities of 4 tracklets
    assert pairs["--data.init_args.eval_batch_size"] == "2" and pairs["--data.init_args.num_workers"] == "0"
    assert pairs["--data.init_args.root"].startswith(str(tmp_path))


def test_class_counts_of_paper_datasets_become_the_synthetic_sets():
    """ImageNet-100 (limited data) asks for 100 classes of the toy's 10 shapes: the subset and the head take 10;
    ImageNet-10 fits and keeps its own; TEL's toy clips take the model's 18 emotions."""
    in100 = load_config("configs/visformer/limited_data/deit_small_in100.yaml")
    assert smoke.class_count_overrides(in100) == [
        "--data.init_args.class_subset", "10", "--model.init_args.net.init_args.num_classes", "10"
    ]  # fmt: skip
    assert smoke.class_count_overrides(load_config("configs/visformer/limited_data/deit_small_in10.yaml")) == []
    assert smoke.class_count_overrides(load_config("configs/tel/subtitles_official.yaml")) == [
        "--data.init_args.toy_classes", "18"
    ]  # fmt: skip


def test_paper_configs_are_the_non_toy_run_configs():
    configs = smoke.paper_configs()
    assert "configs/visformer/visformer_small_in1k.yaml" in configs and "configs/stt/mars.yaml" in configs
    assert not [c for c in configs if Path(c).name.startswith(("_", "toy")) or "sweeps" in c]
    assert "configs/evaluation/in1k_resnet50.yaml" not in configs  # an evaluate config: no model section


def test_a_config_without_a_validation_split_passes_on_its_training_steps(tmp_path, monkeypatch, capsys):
    """LOUPE's pre-training config has no validation shards (``val_shards: null``): its 2 training steps pass, and the
    table says there was no validation split instead of a metric."""
    monkeypatch.chdir(REPO)
    config = tmp_path / "loupe_pretrain_no_val.yaml"
    base = str(REPO / "configs/loupe/toy_pretrain.yaml")
    config.write_text(yaml.safe_dump({"base": base, "data": {"init_args": {"val_shards": None}}}))
    assert smoke.main(["--config", str(config)]) == 0
    line = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("[1/1]"))
    assert line.startswith(f"[1/1] pass {config}") and "no validation split; train/loss" in line, line


def test_a_run_killed_for_memory_is_run_again_with_checkpointing_then_at_batch_one(monkeypatch):
    """The kernel's out-of-memory kill (SIGKILL, exit code -9) gets one more try at the same batch with activation
    checkpointing, and then (killed again, or no module offers checkpointing) one at batch 1, said in the row; any
    other failure is reported as it is."""
    calls = []

    def fake(outcomes):
        def run(config, timeout, batch_size, checkpointing=False):
            calls.append((batch_size, checkpointing))
            return dict(outcomes[(batch_size, checkpointing)])

        return run

    killed = {"ok": False, "error": "the run died (exit code -9)", "exitcode": -9, "seconds": 196.0}
    passed = {"ok": True, "metric": "val/mIoU 0.5", "seconds": 90.0}
    no_module = {"ok": False, "error": "NoCheckpointing: ...", "exitcode": 0, "no_checkpointing": True, "seconds": 9.0}

    monkeypatch.setattr(smoke, "_run_child", fake({(2, False): killed, (2, True): passed}))
    result = smoke.run_one("c.yaml", timeout=10)
    assert calls == [(2, False), (2, True)] and result["ok"]
    assert result["metric"] == (
        "val/mIoU 0.5; activation checkpointing at batch 2 (batch 2 was killed, out of memory, after 196 s)"
    )
    calls.clear()
    monkeypatch.setattr(smoke, "_run_child", fake({(2, False): killed, (2, True): no_module, (1, False): passed}))
    result = smoke.run_one("c.yaml", timeout=10)
    assert calls == [(2, False), (2, True), (1, False)] and result["ok"]
    assert result["metric"] == (
        "val/mIoU 0.5; batch 1 (batch 2 was killed, out of memory, after 196 s; no module offers activation "
        "checkpointing)"
    )
    calls.clear()
    monkeypatch.setattr(smoke, "_run_child", fake({(2, False): killed, (2, True): killed, (1, False): killed}))
    result = smoke.run_one("c.yaml", timeout=10)
    assert calls == [(2, False), (2, True), (1, False)] and not result["ok"]
    assert result["error"].endswith("batch 1 (batch 2 was killed, out of memory, after 196 s; with activation "
                                    "checkpointing it was killed too, after 196 s)")  # fmt: skip
    calls.clear()
    by_smoke = dict(killed, error="killed by smoke: 0.20 GiB of memory left (floor 0.75 GiB) for 5 s")
    monkeypatch.setattr(smoke, "_run_child", fake({(2, False): by_smoke, (2, True): passed}))
    assert smoke.run_one("c.yaml", timeout=10)["metric"] == (
        "val/mIoU 0.5; activation checkpointing at batch 2 (batch 2 was killed, out of memory (smoke's watchdog), "
        "after 196 s)"
    )
    calls.clear()
    monkeypatch.setattr(smoke, "_run_child", fake({(2, False): {"ok": False, "exitcode": 1, "seconds": 1.0}}))
    assert not smoke.run_one("c.yaml", timeout=10)["ok"] and calls == [(2, False)]


def _child_that_hangs(config, scratch, queue, batch_size, checkpointing):
    time.sleep(120)


def _child_that_passes_after_4_s(config, scratch, queue, batch_size, checkpointing):
    time.sleep(4)
    queue.put({"ok": True, "metric": "val/top1 0.5", "peak_gib": 0.1})


def test_a_child_the_machine_has_no_memory_left_for_is_killed_and_counted_as_killed_for_memory(monkeypatch):
    """Without swap the kernel can thrash for tens of minutes instead of killing (seen in a whole ``make test-slow``:
    iTPN-L Mask R-CNN at 21.8 GiB, 5 MiB available, 23 minutes on one config), so the child is killed when the
    available memory stays under the floor for the grace period, with exit code -9, which :func:`run_one` runs
    again with activation checkpointing. A dip shorter than the grace period kills nothing."""
    monkeypatch.setattr(smoke, "_child", _child_that_hangs)
    monkeypatch.setattr(smoke, "available_gib", lambda: 0.2)
    result = smoke._run_child("c.yaml", timeout=100, batch_size=2)
    assert not result["ok"] and result["exitcode"] == -9, result
    assert result["error"] == "killed by smoke: 0.20 GiB of memory left (floor 0.75 GiB) for 5 s"
    assert smoke.MEMORY_GRACE_S <= result["seconds"] < 30, result["seconds"]

    readings = iter([0.2, 0.2, 0.2])
    monkeypatch.setattr(smoke, "_child", _child_that_passes_after_4_s)
    monkeypatch.setattr(smoke, "available_gib", lambda: next(readings, 10.0))
    result = smoke._run_child("c.yaml", timeout=100, batch_size=2)
    assert result["ok"] and result["metric"] == "val/top1 0.5", result


@pytest.mark.skipif(not Path("/proc/meminfo").exists(), reason="no /proc/meminfo (not Linux): the watchdog is off")
def test_available_memory_is_read_from_the_kernel():
    total_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    assert 0 < smoke.available_gib() < total_gib


def test_the_checkpointing_retry_trains_the_same_numbers(monkeypatch):
    """The retry's callback reaches the backbone (HiViT's blocks recomputed in the backward pass) and changes no
    number: the toy iTPN fine-tuning's 2 steps and its validation give the same losses with and without it. A model
    without ``set_grad_checkpointing`` anywhere reports it, so that the caller halves the batch instead."""
    monkeypatch.chdir(REPO)
    config = "configs/itpn/toy_finetune.yaml"
    plain = smoke._run_child(config, timeout=600, batch_size=2)
    checkpointed = smoke._run_child(config, timeout=600, batch_size=2, checkpointing=True)
    assert plain["ok"] and checkpointed["ok"], (plain, checkpointed)
    assert checkpointed["metric"] == plain["metric"] and plain["metric"].startswith("val/")
    assert {"train/loss", "val/loss"} <= set(plain["metrics"]), plain["metrics"]
    assert checkpointed["metrics"] == pytest.approx(plain["metrics"], rel=1e-5)

    import lightning as L
    import torch

    from lightning_modules.backbones.hivit import HiViT

    callback = smoke.activation_checkpointing()
    holder = L.LightningModule()
    holder.net = torch.nn.Linear(2, 2)
    with pytest.raises(smoke.NoCheckpointing, match="LightningModule offers"):
        callback.setup(None, holder, "fit")
    holder.net = HiViT(img_size=32, embed_dim=64, mlp_depth=1, depth=2, num_heads=2, num_classes=0)
    callback.setup(None, holder, "fit")
    assert holder.net.grad_checkpointing
