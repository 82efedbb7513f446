"""Every task's LightningModule takes its networks injected by the config, and repeats none of their arguments
(issue 26, build 1).

For each run config under configs/: the model's ``init_args`` hold at least one network given as
``{class_path, init_args}`` (an ``nn.Module`` class, or a function annotated to return one, such as
``lightning_modules.backbones.registered_model``), and no argument name of the LightningModule's constructor (its
bases' included, where it forwards ``*args`` / ``**kwargs``) is also an argument of an injected network: a value the
module needs from its network it reads from the network, so one config key sets it.
"""

from __future__ import annotations

import importlib
import inspect
import typing
from pathlib import Path

import pytest
from torch import nn

from experiments.configs import load_config, run_config_files

REPO = Path(__file__).resolve().parents[2]
NOT_RUN_CONFIGS = ("sweeps", "evaluation")  # search spaces and evaluation protocols have no model section
NO_NETWORK = {  # model classes that have no network to inject, and why
    "lightning_modules.emotion.prior.ClassFrequencyPrior": "TEL's class-frequency baseline counts labels; no network",
}


def run_configs() -> list[str]:
    return [
        p.relative_to(REPO).as_posix()
        for p in run_config_files(REPO / "configs")
        if not set(p.relative_to(REPO / "configs").parts) & set(NOT_RUN_CONFIGS)
    ]


def resolve(path: str):
    module, _, name = path.rpartition(".")
    return getattr(importlib.import_module(module), name)


def builds_a_module(target) -> bool:
    """``target`` is an ``nn.Module`` class or a callable annotated to return one."""
    if inspect.isclass(target):
        return issubclass(target, nn.Module)
    hints = typing.get_type_hints(target) if callable(target) else {}
    returned = hints.get("return")
    return inspect.isclass(returned) and issubclass(returned, nn.Module)


def argument_names(target) -> set[str]:
    """Named parameters of ``target``'s constructor (or signature), following ``*args`` / ``**kwargs`` up the MRO."""
    names: set[str] = set()
    owners = inspect.getmro(target) if inspect.isclass(target) else (target,)
    for owner in owners:
        init = owner.__init__ if inspect.isclass(owner) else owner
        if inspect.isclass(owner) and "__init__" not in vars(owner):
            continue
        params = inspect.signature(init).parameters.values()
        names |= {p.name for p in params if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD) and p.name != "self"}
        if not any(p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) for p in params):
            break
    return names


def injected_networks(init_args: dict) -> dict[str, object]:
    """``{argument: network callable}`` for every init argument given as ``{class_path, ...}`` building a module
    (one level of lists too: a module may take several networks as a list)."""
    found = {}
    for name, value in (init_args or {}).items():
        for item in value if isinstance(value, list) else [value]:
            if isinstance(item, dict) and "class_path" in item:
                target = resolve(item["class_path"])
                if builds_a_module(target):
                    found[name] = target
    return found


CONFIGS = run_configs()


def test_the_run_configs_are_found():
    assert "configs/stt/mars.yaml" in CONFIGS and "configs/visformer/toy.yaml" in CONFIGS
    assert not any(Path(c).name.startswith("_") for c in CONFIGS)


@pytest.mark.parametrize("config", CONFIGS)
def test_the_module_takes_its_networks_and_repeats_none_of_their_arguments(config, monkeypatch):
    monkeypatch.chdir(REPO)
    model = load_config(config, resolve=False)["model"]
    if model["class_path"] in NO_NETWORK:
        pytest.skip(NO_NETWORK[model["class_path"]])
    module_class = resolve(model["class_path"])
    networks = injected_networks(model.get("init_args"))
    assert networks, (
        f"{config}: {model['class_path']} is given no network as class_path/init_args; inject it "
        "(model.init_args.net: {class_path: ..., init_args: ...})"
    )
    own = argument_names(module_class)
    for name, target in networks.items():
        repeated = sorted(own & argument_names(target))
        assert not repeated, (
            f"{config}: {model['class_path']} repeats {repeated} of its network {name} "
            f"({target.__module__}.{target.__qualname__}); read them from the network"
        )


class ToyNet(nn.Module):
    def __init__(self, seq_len: int = 8, width: int = 4) -> None:
        super().__init__()


class ToyBase:
    def __init__(self, net: nn.Module, *, lr: float = 0.1) -> None:
        self.net = net


class ToyModule(ToyBase):
    def __init__(self, *args, seq_len: int = 8, **kwargs) -> None:
        super().__init__(*args, **kwargs)


def make_toy_net(width: int = 2) -> ToyNet:
    return ToyNet(width=width)


def test_a_repeated_argument_is_found():
    assert argument_names(ToyModule) == {"seq_len", "net", "lr"}
    assert argument_names(ToyModule) & argument_names(make_toy_net) == set()
    assert argument_names(ToyModule) & argument_names(ToyNet) == {"seq_len"}
    assert builds_a_module(make_toy_net) and builds_a_module(ToyNet) and not builds_a_module(ToyBase)
