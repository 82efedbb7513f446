"""Instantiate parts of a run config (model and/or data) without a Trainer: for tools that need no training loop
(``data check``, ``bench``). Overrides use the CLI's dotted syntax (``--data.init_args.root X``)."""

from __future__ import annotations

import lightning as L
import yaml
from jsonargparse import ArgumentParser

from experiments.configs import load_config, nested_nulls_as_dicts
from experiments.errors import ConfigError

BASES = {"model": L.LightningModule, "data": L.LightningDataModule}


def read_config(config: str) -> dict:
    """The config as a dict with its ``${...}`` resolved as the command line resolves them (``parser_mode:
    omegaconf+``), merged over its bases: ``${oc.env:IMAGENET_ROOT,/datasets/imagenet}`` reads the environment."""
    return load_config(config)


def build_sections(config: str, sections: tuple[str, ...], overrides: list[str]) -> dict:
    """``{"model": LightningModule, "data": LightningDataModule, "trainer": dict}`` for the requested sections."""
    raw = read_config(config)
    parser = ArgumentParser(prog="experiments", exit_on_error=False)
    args = []
    for name in sections:
        if not raw.get(name):
            raise ConfigError(f"{config} has no '{name}' section")
        parser.add_subclass_arguments(BASES[name], name, required=True)
        args += [f"--{name}", yaml.safe_dump(raw[name])]
    init = parser.instantiate_classes(parser.parse_args([*args, *nested_nulls_as_dicts(list(overrides))]))
    return {**{name: init[name] for name in sections}, "trainer": raw.get("trainer", {}) or {}}
