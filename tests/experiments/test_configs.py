"""Configs extending bases (experiments/configs.py): the stack, its merge, interpolation that a command-line override
reaches, and the errors a broken ``base:`` gives."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import yaml

from experiments.configs import (
    config_stack,
    expand_config_args,
    is_base_config,
    load_config,
    merged_config,
    run_config_files,
)
from experiments.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]
TOY = "configs/visformer/toy.yaml"


def write(path: Path, data: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.fixture
def stack(tmp_path):
    """root <- middle (folder above) <- leaf; leaf also names a second base."""
    write(tmp_path / "_root.yaml", {"model": {"a": 1, "b": [1, 2], "nested": {"x": 1, "y": 2}}, "trainer": {"e": 1}})
    write(tmp_path / "sub" / "_middle.yaml", {"base": "../_root.yaml", "model": {"a": 2, "nested": {"y": 3}}})
    write(tmp_path / "sub" / "_extra.yaml", {"data": {"size": "${model.a}"}})
    leaf = write(
        tmp_path / "sub" / "leaf.yaml", {"base": ["_middle.yaml", "_extra.yaml"], "model": {"b": [9]}, "trainer": {}}
    )
    return tmp_path, leaf


def test_the_stack_lists_bases_deepest_first(stack):
    root, leaf = stack
    assert config_stack(leaf) == [
        root / "sub" / "../_root.yaml",
        root / "sub" / "_middle.yaml",
        root / "sub" / "_extra.yaml",
        leaf,
    ]


def test_later_files_override_key_by_key(stack):
    _, leaf = stack
    merged = load_config(leaf)
    assert "base" not in merged
    # mappings merge (nested.x from the root, nested.y from the middle), lists and scalars are replaced
    assert merged["model"] == {"a": 2, "b": [9], "nested": {"x": 1, "y": 3}}
    assert merged["data"] == {"size": 2}  # interpolation resolves on the merged config
    assert merged_config(leaf)["data"] == {"size": "${model.a}"}
    assert merged["trainer"] == {"e": 1}


def test_expand_config_args_puts_the_bases_first(stack):
    root, leaf = stack
    argv = ["fit", "--config", str(leaf), "--trainer.max_epochs", "3"]
    expanded = expand_config_args(argv)
    files = [expanded[i + 1] for i, token in enumerate(expanded) if token == "--config"]
    assert [Path(f).resolve() for f in files] == [p.resolve() for p in config_stack(leaf)]
    assert expanded[-3:] == ["--trainer.max_epochs", "3", "--base=null"]
    assert expand_config_args(["fit", f"--config={TOY}"]) == ["fit", "--config", TOY]  # no base: unchanged
    assert expand_config_args(["fit", "--config", "{model: {}}"]) == ["fit", "--config", "{model: {}}"]


def test_a_base_that_does_not_exist_names_the_file_and_key(tmp_path):
    leaf = write(tmp_path / "leaf.yaml", {"base": "_gone.yaml", "model": {}})
    with pytest.raises(ConfigError, match=r"leaf\.yaml: its base '_gone\.yaml' does not exist .*fix 'base:'"):
        load_config(leaf)


def test_bases_naming_each_other_are_refused(tmp_path):
    write(tmp_path / "_a.yaml", {"base": "_b.yaml"})
    write(tmp_path / "_b.yaml", {"base": "_a.yaml"})
    with pytest.raises(ConfigError, match="name each other in a circle"):
        config_stack(tmp_path / "_a.yaml")


def test_a_base_key_of_the_wrong_type_is_refused(tmp_path):
    leaf = write(tmp_path / "leaf.yaml", {"base": {"file": "x.yaml"}})
    with pytest.raises(ConfigError, match="'base' must be a path or a list of paths"):
        load_config(leaf)


def test_bases_are_not_run_configs():
    assert is_base_config("configs/stt/_base.yaml") and not is_base_config("configs/stt/mars.yaml")
    found = run_config_files(REPO / "configs")
    assert REPO / TOY in found and not any(p.name.startswith("_") for p in found)


def parse_fit(argv: list[str]):
    """The ``fit`` namespace ``python -m experiments fit <argv>`` resolves to (nothing instantiated)."""
    from experiments.cli import SuiteCLI

    parser = SuiteCLI.command_parser()
    saved = sys.argv
    sys.argv = [saved[0], "fit", *argv]
    try:
        return parser.parse_args(expand_config_args(sys.argv[1:])).fit
    finally:
        sys.argv = saved


def test_a_command_line_override_reaches_every_interpolated_use(tmp_path, monkeypatch):
    """omegaconf+ resolves ``${...}`` after the files and the command line merge: overriding the source value on the
    command line changes its uses in another section and in another file."""
    monkeypatch.chdir(REPO)
    base = write(tmp_path / "_toy.yaml", {"base": str(REPO / TOY)})
    leaf = write(
        tmp_path / "toy_interpolated.yaml",
        {"base": base.name, "data": {"init_args": {"batch_size": "${trainer.max_epochs}"}}},
    )
    assert (
        parse_fit(["--config", str(leaf)]).data.init_args.batch_size == load_config(REPO / TOY)["trainer"]["max_epochs"]
    )
    parsed = parse_fit(["--config", str(leaf), "--trainer.max_epochs", "7"])
    assert parsed.trainer.max_epochs == 7 and parsed.data.init_args.batch_size == 7
    assert parsed.base is None  # the saved config holds the merged values and names no base to merge again


def test_the_saved_config_of_a_run_from_a_based_config_parses_again(tmp_path, monkeypatch):
    """``config.yaml`` of a run (here the printed config) has ``base: null``: it runs again as it is."""
    from experiments.cli import SuiteCLI

    monkeypatch.chdir(REPO)
    leaf = write(tmp_path / "leaf.yaml", {"base": str(REPO / TOY), "trainer": {"max_epochs": 2}})
    parser = SuiteCLI.command_parser()
    namespace = parser.parse_args(expand_config_args(["fit", "--config", str(leaf)]))
    saved = tmp_path / "config.yaml"
    saved.write_text(yaml.safe_dump(yaml.safe_load(parser.dump(namespace, skip_none=False))["fit"]))
    again = parse_fit(["--config", str(saved)])
    assert again.trainer.max_epochs == 2 and again.model.class_path == namespace.fit.model.class_path


def test_a_run_from_a_based_config_is_named_after_it(tmp_path, monkeypatch):
    """The run folder and metrics.json's config come from the last --config, bases or not (jsonargparse's
    omegaconf+ mode keeps no `config` key, so the CLI notes the files itself)."""
    from experiments.cli import SuiteCLI

    monkeypatch.chdir(REPO)
    leaf = write(tmp_path / "my_run.yaml", {"base": str(REPO / TOY), "trainer": {"max_epochs": 2}})
    for config, name in ((leaf, "my_run"), (REPO / TOY, "toy")):
        cli = SuiteCLI(args=["--config", str(config), "--runs_dir", str(tmp_path / "runs")], run=False)
        assert cli.run_name() == name and cli.run_config() == str(config)
        assert cli.run_dir.parent == tmp_path / "runs" / name


@pytest.mark.parametrize("null", ["null", "~"])
def test_a_null_on_the_command_line_reaches_a_key_of_a_nested_network(null, monkeypatch):
    """jsonargparse reads ``--model.init_args.net.init_args.pretrained null`` as the string 'None' and refuses it for
    an ``int | None`` key; the CLI rewrites it into the network's dict form, which merges a real None and keeps the
    network's other arguments."""
    monkeypatch.chdir(REPO)
    config = "configs/itpn/finetune_base_clip.yaml"
    net = load_config(REPO / config)["model"]["init_args"]["net"]["init_args"]
    assert net["pretrained"] and net["num_classes"]  # the file sets both, so the null is what changes them
    parsed = parse_fit(["--config", config, "--model.init_args.net.init_args.pretrained", null,
                        f"--model.init_args.net.init_args.num_classes={null}"])  # fmt: skip
    args = parsed.model.init_args.net.init_args
    assert args.pretrained is None and args.num_classes is None
    assert args.name == net["name"] and args.drop_path_rate == net["drop_path_rate"]


def test_only_nulls_of_nested_keys_are_rewritten():
    from experiments.configs import nested_nulls_as_dicts

    argv = ["--model.init_args.a.init_args.b.c", "null", "--model.init_args.x", "null", "--trainer.y=null",
            "--model.init_args.a.init_args.d", "0"]  # fmt: skip
    assert nested_nulls_as_dicts(argv) == [
        "--model.init_args.a", '{"init_args": {"b": {"c": null}}}', "--model.init_args.x", "null", "--trainer.y=null",
        "--model.init_args.a.init_args.d", "0",
    ]  # fmt: skip
