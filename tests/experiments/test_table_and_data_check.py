"""Paper tables (paper numbers beside measured ones) and `data check` on a damaged tree."""

import json
import shutil

import pytest

from experiments.data import main as data_main
from experiments.errors import ConfigError
from experiments.table import load_table, render_table, reproduce_commands


def write_metrics(runs, name, version, record):
    folder = runs / name / f"version_{version}"
    folder.mkdir(parents=True)
    (folder / "metrics.json").write_text(json.dumps(record))
    return folder


def test_table_puts_measured_beside_paper_and_marks_missing(tmp_path):
    runs = tmp_path / "runs"
    folder = write_metrics(runs, "toy_visformer_tiny", 0,
                           {"scale": "toy", "finished": True, "test": {"test/top1": 0.5412}, "val": {}})  # fmt: skip
    write_metrics(runs, "toy_visformer_small", 0, {"scale": "toy", "finished": False, "test": {}, "val": {}})
    table = render_table("visformer", runs)
    lines = {line.split(" | ")[0].lstrip("| "): line for line in table.splitlines() if line.startswith("| ")}
    tiny = lines["Visformer-Ti, ImageNet-1K top-1"]
    assert "| 78.6 |" in tiny and "| 54.12 |" in tiny and "| toy |" in tiny and str(folder) in tiny
    small = lines["Visformer-S, ImageNet-1K top-1"]
    assert "| 82.2 |" in small and "not run" in small  # an unfinished run does not count
    assert "| n/a |" in lines["net3 (+ stages), elite setting"]


def test_table_takes_the_newest_finished_run(tmp_path):
    runs = tmp_path / "runs"
    write_metrics(runs, "toy_visformer_tiny", 0, {"scale": "toy", "finished": True, "test": {"test/top1": 0.1}})
    newer = write_metrics(runs, "toy_visformer_tiny", 1, {"scale": "toy", "finished": True, "test": {"test/top1": 0.2}})
    import os

    os.utime(newer / "metrics.json", (2e9, 2e9))
    assert "| 20.00 |" in render_table("visformer", runs, scale="toy")


def test_unknown_table_lists_known_ones():
    with pytest.raises(ConfigError, match="visformer"):
        load_table("no_such_paper")


def test_reproduce_toy_commands_run_the_toy_variants():
    commands = reproduce_commands("visformer", "toy")
    assert len(commands) == 2 and all(
        "configs/visformer/toy.yaml" in c and "--test_after_fit true" in c for c in commands
    )
    assert "visformer_small" in commands[1]
    full = reproduce_commands("visformer", "full")
    assert any("visformer_small_in1k.yaml" in c for c in full) and len(full) == len(load_table("visformer")[1])


def test_rows_with_a_pretraining_step_run_it_first_and_fine_tune_from_its_checkpoint():
    toy = reproduce_commands("itpn", "toy")
    assert toy[0].endswith("--config configs/itpn/toy_pixel.yaml --run_name toy_itpn_base_pixel")
    assert "configs/itpn/toy_finetune.yaml" in toy[1]
    assert (
        "--model.init_args.net.init_args.pretrained 'runs/toy_itpn_base_pixel/version_*/checkpoints/last.ckpt'"
        in toy[1]
    )
    full = reproduce_commands("itpn", "full")
    _, rows = load_table("itpn")
    # each pre-training runs once (Table 2's downstream rows reuse Table 1's), then one run per (recipe, pre-training):
    # the box- and mask-AP rows of one detection run share it
    runs = {(row.config, row.pretrain) for row in rows}
    assert len(full) == len({row.pretrain for row in rows}) + len(runs)
    assert (
        sum("pretrain_base_pixel_1600ep.yaml --" in c or c.endswith("pretrain_base_pixel_1600ep.yaml") for c in full)
        == 1
    )
    # rows sharing a fine-tuning recipe write distinct run folders, named after their pre-training
    names = {row.run_name("full") for row in rows}
    assert len(names) == len(runs) and "finetune_base_pixel__pretrain_base_pixel_400ep" in names


def test_data_check_names_missing_and_corrupt_files(toy_imagenet, tmp_path, capsys):
    root = tmp_path / "damaged"
    shutil.copytree(toy_imagenet, root)
    shutil.rmtree(root / "val" / "bar")
    bad = sorted((root / "train" / "circle").glob("*.JPEG"))[0]
    bad.write_bytes(b"not a jpeg")
    config = "configs/visformer/visformer_small_in1k.yaml"
    code = data_main(["check", "--config", config, "--data.root", str(root), "--data.test_split", "test"])
    out = capsys.readouterr().out
    assert code == 1
    assert f"{root / 'val' / 'bar'}: class folder missing" in out
    assert f"{bad}: cannot decode image" in out
    assert "2 problem(s)" in out
    assert "train: classes 4, images 48" in out


def test_data_check_of_a_clean_tree_passes(toy_imagenet, capsys):
    config = "configs/visformer/visformer_small_in1k.yaml"
    assert data_main(["check", "--config", config, "--data.root", str(toy_imagenet), "--data.test_split", "test"]) == 0
    assert "0 problem(s)" in capsys.readouterr().out


def test_data_check_rejects_non_data_overrides():
    with pytest.raises(ConfigError, match="only --data"):
        data_main(["check", "--config", "configs/visformer/toy.yaml", "--trainer.devices", "2"])


def test_every_table_loads_and_names_existing_configs():
    from pathlib import Path

    from experiments.table import available_tables

    repo = Path(__file__).resolve().parents[2]
    for paper in available_tables():
        _, rows = load_table(paper)
        for row in rows:
            assert (repo / row.config).is_file(), (paper, row.config)
            assert not row.toy or (repo / row.toy["config"]).is_file(), (paper, row.toy)


def test_data_check_of_a_missing_root_is_one_named_problem(capsys):
    assert (
        data_main(["check", "--config", "configs/visformer/visformer_small_in1k.yaml", "--data.root", "/nonexistent"])
        == 1
    )
    assert "problem: data.root '/nonexistent' does not exist" in capsys.readouterr().out
