"""Every YAML file under configs/ resolves as stored in tests/fixtures/resolved_configs.json, written before issue 26
restructures configs/ into shared bases: that refactor must leave the resolved config of every existing config as is.

* ``run_configs`` (files with ``model``, ``data`` and ``trainer`` sections): the ``fit`` namespace as SuiteCLI's
  parser resolves ``fit --config <file>`` (subclass mode, omegaconf interpolation, every default filled in), with
  nothing instantiated; the ``config`` key (the file's own path) is left out.
* ``other_yaml`` (sweep spaces under configs/sweeps/, evaluation configs under configs/evaluation/):
  ``OmegaConf.to_container(OmegaConf.load(path), resolve=True)``.

Both are resolved from the repository root with every ``${oc.env:VAR,default}`` variable of configs/ unset, so the
defaults are stored whatever the machine sets.

Issue 26 moves a network's arguments from the LightningModule into the network it injects
(``model.init_args.seq_len`` -> ``model.init_args.net.init_args.seq_len``). Each such move is listed once per model
class in ``tests/fixtures/config_moves/<family>.yaml``::

    lightning_modules.reid.module.STTModule:        # the model's class_path in the fixture
      class_path: lightning_modules.reid.module.STTModule   # optional: its class_path now
      moved: {seq_len: net.init_args.seq_len}      # old key -> new key, both under model.init_args
      dropped: {some_flag: why it no longer exists}

and the comparison reads the fixture's keys through those moves: every stored value must be found, unchanged, at its
(moved) key. Keys that are new are accepted only under an injected network (``model.init_args.<name>.class_path`` and
``model.init_args.<name>.init_args.*``, the network's defaults, now shown); any other new key is a difference.

Regenerate the fixture only when a config's resolved value is meant to change (or a config is added or removed):
``.venv/bin/python tests/experiments/test_resolved_configs.py`` prints what differs and leaves the fixture alone;
add ``--write`` to overwrite it, and commit it with the config change so that its diff shows each changed value.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from contextlib import contextmanager
from pathlib import Path

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run as a script from anywhere
from experiments.configs import config_stack, expand_config_args, load_config, run_config_files  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
FIXTURE = REPO / "tests" / "fixtures" / "resolved_configs.json"
MOVES = REPO / "tests" / "fixtures" / "config_moves"
ENV_VAR = re.compile(r"\$\{oc\.env:([A-Za-z_][A-Za-z0-9_]*)")
RUN_SECTIONS = {"model", "data", "trainer"}
PATH_KEYS = ("config", "base")  # where the config file and its bases lie, not what they resolve to
SHOWN_KEYS = 5  # differing keys listed per config


def config_files() -> list[str]:
    """Every YAML file under configs/ but the bases (``_*.yaml``), relative to the repository root."""
    return [p.relative_to(REPO).as_posix() for p in run_config_files(REPO / "configs")]


def is_run_config(path: str) -> bool:
    raw = load_config(REPO / path, resolve=False)
    return isinstance(raw, dict) and RUN_SECTIONS <= set(raw)


@contextmanager
def config_environment(paths: list[str]):
    """The repository root as working directory and every ``${oc.env:VAR,...}`` variable of ``paths`` unset; both
    restored on exit."""
    files = {item for path in paths for item in config_stack(REPO / path)}
    names = {name for item in files for name in ENV_VAR.findall(item.read_text())}
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(REPO)
        for name in sorted(names):
            patch.delenv(name, raising=False)
        yield


def fit_parser():
    """SuiteCLI's parser, built as ``python -m experiments fit`` builds it; nothing is parsed or instantiated."""
    from experiments.cli import SuiteCLI

    return SuiteCLI.command_parser()


def resolve_run_config(parser, path: str) -> dict:
    """The ``fit`` namespace of ``fit --config path`` as a plain dict, without :data:`PATH_KEYS`."""
    argv = sys.argv
    sys.argv = [argv[0], "fit", *expand_config_args(["--config", path])]  # SuiteArgumentParser's error line reads it
    try:
        parsed = parser.parse_args(sys.argv[1:])
    except SystemExit as exit_:
        raise ValueError(f"{path}: the fit parser refuses it (exit {exit_.code}), error above") from exit_
    finally:
        sys.argv = argv
    resolved = parsed.fit.as_dict()
    for key in PATH_KEYS:
        resolved.pop(key, None)
    return json.loads(json.dumps(resolved))  # tuples as lists, as the fixture reads back


def resolve_other_yaml(path: str) -> dict:
    return load_config(REPO / path)


def resolve_config(parser, path: str) -> tuple[str, dict]:
    """``(kind, resolved)`` of one file under configs/: kind ``run_configs`` or ``other_yaml``."""
    if is_run_config(path):
        return "run_configs", resolve_run_config(parser, path)
    return "other_yaml", resolve_other_yaml(path)


def resolve_all(parser=None) -> dict[str, dict[str, dict]]:
    """``{"run_configs": {path: resolved}, "other_yaml": {path: resolved}}`` for every file under configs/."""
    paths = config_files()
    resolved = {"run_configs": {}, "other_yaml": {}}
    with config_environment(paths):
        parser = parser or fit_parser()
        for path in paths:
            kind, config = resolve_config(parser, path)
            resolved[kind][path] = config
    return resolved


def flatten(node, prefix: str = "") -> dict[str, str]:
    """Dotted key (``[i]`` for list items) -> the JSON text of each leaf; empty dicts and lists are leaves."""
    if isinstance(node, dict) and node:
        items = ((f"{prefix}.{key}" if prefix else str(key), value) for key, value in node.items())
    elif isinstance(node, list) and node:
        items = ((f"{prefix}[{i}]", value) for i, value in enumerate(node))
    else:
        return {prefix: json.dumps(node, sort_keys=True)}
    flat = {}
    for key, value in items:
        flat.update(flatten(value, key))
    return flat


def load_moves(folder: Path = MOVES) -> dict[str, dict]:
    """``{old model class_path: {"class_path": new, "moved": {old: new}, "dropped": {old: why}}}`` from every YAML
    file in ``folder``; a class listed twice is an error."""
    moves: dict[str, dict] = {}
    for file in sorted(folder.glob("*.yaml")) if folder.is_dir() else []:
        for class_path, entry in (yaml.safe_load(file.read_text()) or {}).items():
            if class_path in moves:
                raise ValueError(f"{file.name}: {class_path} is listed in another config_moves file too")
            unknown = set(entry) - {"class_path", "moved", "dropped"}
            if unknown:
                raise ValueError(f"{file.name}: {class_path} has unknown entries {sorted(unknown)}")
            moves[class_path] = {"moved": {}, "dropped": {}, **entry}
    return moves


def moved_key(key: str, moved: dict[str, str]) -> str:
    """``key`` (dotted, under ``model.init_args.``) renamed by the longest entry of ``moved`` it starts with."""
    prefix = "model.init_args."
    if not key.startswith(prefix):
        return key
    rest = key[len(prefix) :]
    for old in sorted(moved, key=len, reverse=True):
        if rest == old or rest.startswith((old + ".", old + "[")):
            return prefix + moved[old] + rest[len(old) :]
    return key


def read_through_moves(old: dict[str, str], moves: dict[str, dict]) -> tuple[dict[str, str], list[str]]:
    """The stored flat config ``old`` with its keys moved as ``moves`` lists for its model class; also the old keys
    that two different stored values would move onto (each such key is a difference)."""
    class_path = json.loads(old.get("model.class_path", "null"))
    entry = moves.get(class_path)
    if entry is None:
        return old, []
    out: dict[str, str] = {}
    clashes = []
    for key, value in old.items():
        if key.startswith("model.init_args.") and key[len("model.init_args.") :].split(".")[0] in entry["dropped"]:
            continue
        new_key = moved_key(key, entry["moved"])
        if new_key in out and out[new_key] != value:
            clashes.append(new_key)
        out[new_key] = value
    if entry.get("class_path"):
        out["model.class_path"] = json.dumps(entry["class_path"])
    return out, clashes


def injected(key: str, new: dict[str, str]) -> bool:
    """``key`` is an injected network's class_path or one of its init_args (``model.init_args.<name>.*`` where
    ``model.init_args.<name>.class_path`` is set)."""
    parts = key.split(".")
    if len(parts) < 4 or parts[:2] != ["model", "init_args"]:
        return False
    owner = ".".join(parts[:3])
    return f"{owner}.class_path" in new and (parts[3] == "class_path" or parts[3] == "init_args")


def differences(stored: dict, now: dict, moves: dict[str, dict] | None = None) -> list[str]:
    """One entry per config whose resolved form differs between ``stored`` and ``now`` (both as
    :func:`resolve_all` returns them), naming the first :data:`SHOWN_KEYS` differing keys with both values. Stored
    keys are read through ``moves`` (:func:`load_moves` when None); new keys under an injected network are not
    differences."""
    moves = load_moves() if moves is None else moves
    found = []
    for kind in sorted(stored.keys() | now.keys()):
        before, after = stored.get(kind, {}), now.get(kind, {})
        for path in sorted(before.keys() | after.keys()):
            if path not in after:
                found.append(f"{path}: in the fixture ({kind}) but not found as one now")
                continue
            if path not in before:
                found.append(f"{path}: not in the fixture ({kind})")
                continue
            old, clashes = read_through_moves(flatten(before[path]), moves)
            new = flatten(after[path])
            keys = [
                key
                for key in sorted(old.keys() | new.keys())
                if old.get(key) != new.get(key) and not (key not in old and injected(key, new))
            ]
            keys = sorted(set(keys) | set(clashes))
            if not keys:
                continue
            lines = [f"{path}: {len(keys)} key(s) differ (fixture -> now)"]
            lines += [
                f"    {key}: {old.get(key, '<absent>')} -> {new.get(key, '<absent>')}" for key in keys[:SHOWN_KEYS]
            ]
            if len(keys) > SHOWN_KEYS:
                lines.append(f"    ... and {len(keys) - SHOWN_KEYS} more")
            found.append("\n".join(lines))
    return found


def fixture_text(resolved: dict) -> str:
    return json.dumps(resolved, indent=1, sort_keys=True) + "\n"


def update_fixture(resolved: dict, fixture: Path, write: bool, moves: dict[str, dict] | None = None) -> int:
    """Print how ``resolved`` differs from ``fixture``; overwrite it only with ``write``. 0 when the fixture (now)
    holds ``resolved``, 1 when it differs and was left alone."""
    stored = json.loads(fixture.read_text()) if fixture.is_file() else None
    found = differences(stored, resolved, moves) if stored is not None else []
    for entry in found:
        print(entry)
    counts = ", ".join(f"{len(configs)} {kind}" for kind, configs in sorted(resolved.items()))
    if stored is not None and not found:
        print(f"{fixture} holds every config as it resolves now ({counts})")
        return 0
    if not write:
        what = f"{len(found)} config(s) differ from" if stored is not None else "there is no"
        print(f"{what} {fixture}; pass --write to write it ({counts})", file=sys.stderr)
        return 1
    fixture.parent.mkdir(parents=True, exist_ok=True)
    fixture.write_text(fixture_text(resolved))
    print(f"wrote {fixture} ({counts})")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--write", action="store_true", help=f"overwrite {FIXTURE.relative_to(REPO)}")
    args = parser.parse_args(argv)
    return update_fixture(resolve_all(), FIXTURE, args.write)


# -- tests -------------------------------------------------------------------------------------------------------


REGENERATE = "if meant, regenerate it: .venv/bin/python tests/experiments/test_resolved_configs.py --write"
STORED = json.loads(FIXTURE.read_text()) if FIXTURE.is_file() else {}
STORED_CONFIGS = sorted((path, kind) for kind, configs in STORED.items() for path in configs)


@pytest.fixture(scope="module")
def parser():
    return fit_parser()


@pytest.fixture(scope="module")
def stored():
    return STORED


def test_the_fixture_lists_every_config():
    assert STORED, (
        f"no {FIXTURE.relative_to(REPO)}: write it with "
        ".venv/bin/python tests/experiments/test_resolved_configs.py --write"
    )
    now = {(path, "run_configs" if is_run_config(path) else "other_yaml") for path in config_files()}
    missing = [f"{path} ({kind})" for path, kind in sorted(now - set(STORED_CONFIGS))]
    gone = [f"{path} ({kind})" for path, kind in sorted(set(STORED_CONFIGS) - now)]
    assert (missing, gone) == ([], []), (
        f"configs/ and {FIXTURE.relative_to(REPO)} list different files ({REGENERATE}); not in the fixture: "
        f"{', '.join(missing) or 'none'}; in the fixture only: {', '.join(gone) or 'none'}"
    )


@pytest.mark.parametrize("path,kind", STORED_CONFIGS, ids=[path for path, _ in STORED_CONFIGS])
def test_config_resolves_as_stored(parser, path, kind):
    assert (REPO / path).is_file(), f"{path} is in {FIXTURE.relative_to(REPO)} but not under configs/ ({REGENERATE})"
    with config_environment([path]):
        now_kind, now = resolve_config(parser, path)
    found = differences({kind: {path: STORED[kind][path]}}, {now_kind: {path: now}})
    assert found == [], f"resolves differently from {FIXTURE.relative_to(REPO)} ({REGENERATE}):\n" + "\n".join(found)


def test_fixture_covers_run_configs_and_other_yaml(stored):
    assert set(stored) == {"run_configs", "other_yaml"}
    assert "configs/visformer/toy.yaml" in stored["run_configs"]
    assert {"configs/sweeps/lr_wd.yaml", "configs/evaluation/toy_resnet.yaml"} <= set(stored["other_yaml"])
    toy = stored["run_configs"]["configs/visformer/toy.yaml"]
    assert toy["model"]["class_path"].startswith("lightning_modules.")
    assert "config" not in toy  # the file's path is not part of what it resolves to
    assert "max_epochs" in toy["trainer"] and "batch_size" in toy["data"]["init_args"]  # defaults filled in
    assert stored["other_yaml"]["configs/sweeps/lr_wd.yaml"]["model.init_args.optim.weight_decay"] == {
        "low": 0.0,
        "high": 0.1,
    }


def test_environment_roots_are_stored_as_their_defaults(parser, stored, monkeypatch):
    config = "configs/visformer/visformer_small_in1k.yaml"
    assert any("${oc.env:IMAGENET_ROOT,/datasets/imagenet}" in f.read_text() for f in config_stack(REPO / config))
    monkeypatch.setenv("IMAGENET_ROOT", "/elsewhere/imagenet")
    with config_environment([config]):
        root = resolve_run_config(parser, config)["data"]["init_args"]["root"]
    assert root == "/datasets/imagenet"
    assert stored["run_configs"][config]["data"]["init_args"]["root"] == "/datasets/imagenet"
    assert os.environ["IMAGENET_ROOT"] == "/elsewhere/imagenet"  # restored after resolving


def test_a_changed_config_value_is_reported_with_its_key(parser, stored, tmp_path):
    config = "configs/visformer/toy.yaml"
    raw = load_config(REPO / config, resolve=False)  # merged over its bases: the copy stands alone
    old_epochs = stored["run_configs"][config]["trainer"]["max_epochs"]
    raw["trainer"]["max_epochs"] = old_epochs + 7
    changed = tmp_path / "toy.yaml"
    changed.write_text(yaml.safe_dump(raw))
    with config_environment([config]):
        now = resolve_run_config(parser, str(changed))
    found = differences({"run_configs": {config: stored["run_configs"][config]}}, {"run_configs": {config: now}})
    assert found == [
        f"{config}: 1 key(s) differ (fixture -> now)\n    trainer.max_epochs: {old_epochs} -> {old_epochs + 7}"
    ]


def test_differences_list_the_first_keys_and_missing_configs(stored):
    now = json.loads(json.dumps(stored))
    evaluation = now["other_yaml"]["configs/evaluation/toy_resnet.yaml"]
    evaluation["seed"] = "0"  # same printed value, other type
    evaluation["backbone"]["kwargs"]["channels"].append(512)
    del now["other_yaml"]["configs/sweeps/lr_wd.yaml"]
    now["run_configs"]["configs/new.yaml"] = {}
    run = now["run_configs"]["configs/visformer/toy.yaml"]
    for i in range(SHOWN_KEYS + 2):
        run[f"extra{i}"] = i
    assert differences(stored, now, {}) == [
        "configs/evaluation/toy_resnet.yaml: 2 key(s) differ (fixture -> now)\n"
        "    backbone.kwargs.channels[4]: <absent> -> 512\n"
        '    seed: 0 -> "0"',
        "configs/sweeps/lr_wd.yaml: in the fixture (other_yaml) but not found as one now",
        "configs/new.yaml: not in the fixture (run_configs)",
        f"configs/visformer/toy.yaml: {SHOWN_KEYS + 2} key(s) differ (fixture -> now)\n"
        + "\n".join(f"    extra{i}: <absent> -> {i}" for i in range(SHOWN_KEYS))
        + "\n    ... and 2 more",
    ]


def test_the_writer_overwrites_the_fixture_only_with_write(stored, tmp_path, capsys):
    toy, sweep = "configs/visformer/toy.yaml", "configs/sweeps/lr_wd.yaml"
    resolved = {"run_configs": {toy: stored["run_configs"][toy]}, "other_yaml": {sweep: stored["other_yaml"][sweep]}}
    fixture = tmp_path / "resolved.json"
    assert update_fixture(resolved, fixture, write=False, moves={}) == 1
    assert not fixture.exists()
    assert "there is no" in capsys.readouterr().err
    assert update_fixture(resolved, fixture, write=True, moves={}) == 0
    assert json.loads(fixture.read_text()) == resolved
    assert update_fixture(resolved, fixture, write=False, moves={}) == 0
    stale = json.loads(fixture.read_text())
    stale["run_configs"]["configs/visformer/toy.yaml"]["seed_everything"] = -1
    fixture.write_text(fixture_text(stale))
    assert update_fixture(resolved, fixture, write=False, moves={}) == 1
    out, err = capsys.readouterr()
    assert "configs/visformer/toy.yaml: 1 key(s) differ" in out and "seed_everything: -1 -> " in out
    assert "1 config(s) differ from" in err and "--write" in err
    assert json.loads(fixture.read_text()) == stale  # left alone
    assert update_fixture(resolved, fixture, write=True, moves={}) == 0
    assert json.loads(fixture.read_text()) == resolved


def test_moved_keys_are_read_at_their_new_place():
    moves = {"pkg.Module": {"moved": {"seq_len": "net.init_args.seq_len"}, "dropped": {"old_flag": "gone"}}}
    stored = {"model": {"class_path": "pkg.Module", "init_args": {"seq_len": 8, "old_flag": True, "lr": 0.1}}}
    net = {"class_path": "pkg.Net", "init_args": {"seq_len": 8, "width": 4}}
    now = {"model": {"class_path": "pkg.Module", "init_args": {"net": net, "lr": 0.1}}}
    assert differences({"run_configs": {"c.yaml": stored}}, {"run_configs": {"c.yaml": now}}, moves) == []
    changed = json.loads(json.dumps(now))
    changed["model"]["init_args"]["net"]["init_args"]["seq_len"] = 4  # a moved value that changed
    changed["model"]["init_args"]["extra"] = 1  # a new key outside the injected network
    assert differences({"run_configs": {"c.yaml": stored}}, {"run_configs": {"c.yaml": changed}}, moves) == [
        "c.yaml: 2 key(s) differ (fixture -> now)\n"
        "    model.init_args.extra: <absent> -> 1\n"
        "    model.init_args.net.init_args.seq_len: 8 -> 4"
    ]


if __name__ == "__main__":
    sys.exit(main())
