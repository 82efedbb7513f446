"""Dataset roots in configs/ come from one environment variable per dataset, ``${oc.env:VAR,default}``, resolved by
the CLI's omegaconf parser mode; toy roots (written by the suite) stay literal."""

import re
from collections import defaultdict
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
ENV_ROOT = re.compile(r"^\$\{oc\.env:([A-Z0-9_]+),([^{}]+)\}$")
SUBFOLDER_KEYS = {"video_root", "features_root"}  # folders inside data.root (datamodules/video_subtitles.py)
IMAGENET_CONFIG = "configs/visformer/visformer_small_in1k.yaml"


def config_roots() -> list[tuple[str, str, str, dict]]:
    """``(config, key, value, mapping)`` for every string value under a key ending in ``root`` in configs/."""
    found = []

    def walk(node, path: str) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if isinstance(key, str) and key.endswith("root") and isinstance(value, str):
                    found.append((path, key, value, node))
                walk(value, path)
        elif isinstance(node, list):
            for item in node:
                walk(item, path)

    for config in sorted((REPO / "configs").rglob("*.yaml")):
        walk(yaml.safe_load(config.read_text()), str(config.relative_to(REPO)))
    return found


def env_defaults() -> dict[str, set[str]]:
    """Each variable the configs read, with the defaults it is given."""
    uses = defaultdict(set)
    for _, _, value, _ in config_roots():
        match = ENV_ROOT.match(value)
        if match:
            uses[match[1]].add(match[2])
    return uses


def test_no_config_hard_codes_a_dataset_root():
    literal = []
    for config, key, value, node in config_roots():
        if ENV_ROOT.match(value):
            continue
        if key in SUBFOLDER_KEYS and not value.startswith("/") and ".." not in Path(value).parts:
            continue
        if value.startswith("data/toy_") or node.get("dataset") == "toy":  # written by the suite on first use
            continue
        literal.append(f"{config}: {key}: {value}")
    assert literal == [], "dataset roots must read ${oc.env:VAR,default}:\n" + "\n".join(literal)


def test_each_variable_has_one_default_everywhere():
    uses = env_defaults()
    assert {"IMAGENET_ROOT", "COCO_ROOT", "ADE20K_ROOT", "MINIIMAGENET_ROOT", "MARS_ROOT", "TEL_ROOT"} <= set(uses)
    assert uses["IMAGENET_ROOT"] == {"/datasets/imagenet"}
    assert {var: defaults for var, defaults in uses.items() if len(defaults) != 1} == {}


@pytest.fixture
def print_config(capfd, monkeypatch):
    """``fit --config C ARGS --print_config`` in-process from the repository root: the printed config."""
    from experiments.__main__ import main

    monkeypatch.chdir(REPO)

    def run(config: str, *args: str) -> dict:
        with pytest.raises(SystemExit) as exit_:
            main(["fit", "--config", config, *args, "--print_config"])
        out, err = capfd.readouterr()
        assert exit_.value.code in (0, None), err
        return yaml.safe_load(out)

    return run


def test_environment_variable_sets_the_root_and_the_command_line_wins(print_config, monkeypatch, tmp_path):
    monkeypatch.delenv("IMAGENET_ROOT", raising=False)
    assert print_config(IMAGENET_CONFIG)["data"]["init_args"]["root"] == "/datasets/imagenet"
    monkeypatch.setenv("IMAGENET_ROOT", str(tmp_path / "in1k"))
    assert print_config(IMAGENET_CONFIG)["data"]["init_args"]["root"] == str(tmp_path / "in1k")
    override = print_config(IMAGENET_CONFIG, "--data.init_args.root", str(tmp_path / "cli"))
    assert override["data"]["init_args"]["root"] == str(tmp_path / "cli")


def test_data_check_reads_the_environment_variable(monkeypatch, tmp_path, capsys):
    from experiments.data import main as data_main

    monkeypatch.chdir(REPO)
    monkeypatch.setenv("IMAGENET_ROOT", str(tmp_path / "in1k"))
    assert data_main(["check", "--config", IMAGENET_CONFIG]) == 1
    assert f"problem: data.root '{tmp_path / 'in1k'}' does not exist" in capsys.readouterr().out


def test_readme_lists_every_root_variable():
    readme = (REPO / "README.md").read_text()
    missing = sorted(var for var in env_defaults() if var not in readme)
    assert missing == [], f"README.md does not list {missing}"
