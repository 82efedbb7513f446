"""``python -m experiments evaluate --config configs/evaluation/X.yaml [--ckpt CKPT] [--backbone NAME] ...``

Frozen-representation evaluations of any pre-trained backbone of the suite (MIM, E-DIY / BYOL, compression ...):

* ``linear``: closed-form linear probe (:func:`lightning_modules.classification.probe.fit_linear_probe`);
* ``knn``: weighted 20-NN, T = 0.07 (:mod:`lightning_modules.evaluation.knn`);
* ``dense``: per-cell classification of multi-object scenes, mIoU, pointing (:mod:`lightning_modules.evaluation.dense`).

The backbone is built by name (timm registry) and loaded from a suite checkpoint's ``backbone.`` / ``encoder.`` weights
(or an official layout ``create_backbone`` knows), or left at random init (the baseline). A checkpoint whose weights do
not fit the configured backbone fails naming the checkpoint, the backbone and the first mismatching keys.

Config keys: ``name`` (run folder), ``scale`` (toy | full), ``seed``, ``device`` (auto | cpu | cuda),
``backbone: {name, kwargs, checkpoint}``, ``protocols``, ``classification: {class_path, init_args, train_split,
eval_split, train_fraction}`` (an ImageNetDataModule-like module, read with its eval transform), ``linear:
{weight_decay, max_iter}``, ``knn: {k, temperature}``, ``dense: {root, dataset, num_classes, img_size, batch_size,
feature_index, mean, std, toy: {...}, weight_decay, max_iter}``.

Writes ``<runs_dir>/<name>/version_N/metrics.json`` (atomically; ``experiments table`` reads it) with the metrics
under ``"test"``: ``test/linear_top1``, ``test/linear_train_top1``, ``test/knn_top1``, ``test/dense_cell_acc``,
``test/dense_miou``, ``test/dense_pointing``.
"""

from __future__ import annotations

import argparse
import importlib
import time
from pathlib import Path
from typing import TYPE_CHECKING

import yaml

from experiments.errors import ConfigError, OneLineArgumentParser
from experiments.flags import canonical_flags

if TYPE_CHECKING:  # torch is imported where it is used: `evaluate --help` stays fast
    import torch
    from torch.utils.data import DataLoader

PROTOCOLS = ("linear", "knn", "dense")


def load_backbone_state(path: str, model: torch.nn.Module, backbone: str) -> dict:
    """The weights of checkpoint ``path`` as ``model``'s keys (suite Lightning prefixes, official layouts mapped)."""
    from lightning_modules.backbones import read_backbone_state, read_torch_checkpoint

    try:
        return read_backbone_state(path, model)[1]
    except ConfigError as err:
        if "no 'encoder.' or 'backbone.' weights" not in str(err):
            raise
        path, state = read_torch_checkpoint(path)
        inner = state.get("state_dict") if isinstance(state, dict) else None
        keys = list(inner)[:8] if isinstance(inner, dict) else []
        raise ConfigError(
            f"checkpoint {path} holds no 'backbone.' or 'encoder.' weights for the configured backbone '{backbone}' "
            f"(its first keys: {keys}); give the checkpoint of a run whose module has a backbone/encoder"
        ) from None


def check_backbone_state(state: dict, model: torch.nn.Module, backbone: str, path: str) -> None:
    """Raise a ConfigError naming ``path``, ``backbone`` and the first keys that are missing, unexpected or of another
    shape (a classifier in the checkpoint is allowed: the evaluated model has none)."""
    target = model.state_dict()
    classifier = getattr(model, "pretrained_cfg", {}).get("classifier") or "head"
    shapes = [
        f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(target[k].shape)}"
        for k, v in state.items()
        if k in target and tuple(v.shape) != tuple(target[k].shape)
    ]
    missing = [k for k in target if k not in state]
    unexpected = [k for k in state if k not in target and not k.startswith((f"{classifier}.", "head.", "fc."))]
    if shapes or missing or unexpected:
        parts = []
        if shapes:
            parts.append(f"{len(shapes)} tensors of another shape, first: {shapes[:3]}")
        if missing:
            parts.append(f"{len(missing)} backbone keys missing from the checkpoint, first: {missing[:5]}")
        if unexpected:
            parts.append(f"{len(unexpected)} checkpoint keys not in the backbone, first: {unexpected[:5]}")
        raise ConfigError(
            f"checkpoint {path} does not match the configured backbone '{backbone}' ({type(model).__name__}): "
            + "; ".join(parts)
            + ". Set backbone.name / backbone.kwargs (or --backbone) to the checkpoint's architecture"
        )


def build_backbone(name: str, kwargs: dict, checkpoint: str | None) -> torch.nn.Module:
    """``name`` (timm registry) without classifier, loaded from ``checkpoint`` (None: random init)."""
    from lightning_modules.backbones import create_backbone

    model = create_backbone(name, None, num_classes=0, **kwargs)
    if checkpoint:
        state = load_backbone_state(checkpoint, model, name)
        check_backbone_state(state, model, name, checkpoint)
        model.load_state_dict({k: v for k, v in state.items() if k in model.state_dict()})
    return model.eval()


def instantiate(spec: dict):
    module, _, cls = spec["class_path"].rpartition(".")
    return getattr(importlib.import_module(module), cls)(**spec.get("init_args", {}))


def classification_loaders(cfg: dict, seed: int) -> tuple[DataLoader, DataLoader]:
    """Train / eval loaders of the configured classification data, both with the eval transform (no augmentation)."""
    import torch
    from torch.utils.data import Subset

    dm = instantiate(cfg)
    dm.prepare_data()
    train = dm._dataset(cfg.get("train_split", "train"), train=False)
    fraction = float(cfg.get("train_fraction", 1.0))
    if fraction < 1.0:
        keep = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed))[: int(len(train) * fraction)]
        train = Subset(train, sorted(keep.tolist()))
    test = dm._dataset(cfg.get("eval_split", "val"), train=False)
    return dm.loader(train, train=False), dm.loader(test, train=False)


def dense_loaders(cfg: dict) -> tuple[DataLoader, DataLoader]:
    from torch.utils.data import DataLoader

    from datamodules.toy.dense_scenes import DenseScenesDataset, ensure_dense_scenes

    if cfg.get("dataset", "toy") == "toy":
        ensure_dense_scenes(cfg["root"], num_classes=cfg["num_classes"], **cfg.get("toy", {}))
    kwargs = dict(img_size=cfg.get("img_size"))
    kwargs.update({k: tuple(cfg[k]) for k in ("mean", "std") if k in cfg})
    batch, workers = cfg.get("batch_size", 64), cfg.get("num_workers", 0)
    return tuple(
        DataLoader(DenseScenesDataset(cfg["root"], split, **kwargs), batch_size=batch, num_workers=workers)
        for split in ("train", "val")
    )


def evaluate(config: dict, config_path: str | None = None, runs_dir: str = "runs") -> tuple[dict, Path]:
    """Run the configured protocols; returns (metrics record, run dir) after writing ``metrics.json``."""
    import torch

    from experiments.cli import next_version_dir
    from experiments.io import atomic_write_json
    from lightning_modules.classification.probe import extract_features, fit_linear_probe
    from lightning_modules.evaluation import dense_evaluation, knn_accuracy

    started = time.time()
    protocols = list(config.get("protocols", PROTOCOLS))
    unknown = [p for p in protocols if p not in PROTOCOLS]
    if unknown:
        raise ConfigError(f"unknown protocols {unknown}; choose from {list(PROTOCOLS)}")
    seed = int(config.get("seed", 0))
    torch.manual_seed(seed)
    device = config.get("device", "auto")
    device = ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device
    spec = config["backbone"]
    backbone = build_backbone(spec["name"], dict(spec.get("kwargs") or {}), spec.get("checkpoint"))
    metrics, timings = {}, {}
    if "linear" in protocols or "knn" in protocols:
        tic = time.time()
        train_loader, test_loader = classification_loaders(config["classification"], seed)
        train_x, train_y = extract_features(backbone, train_loader, device)
        test_x, test_y = extract_features(backbone, test_loader, device)
        timings["features"] = round(time.time() - tic, 2)
        if "linear" in protocols:
            tic = time.time()
            probe = fit_linear_probe(train_x, train_y, test_x, test_y, **config.get("linear", {}))
            metrics.update({"test/linear_top1": probe.test_accuracy, "test/linear_train_top1": probe.train_accuracy})
            timings["linear"] = round(time.time() - tic, 2)
        if "knn" in protocols:
            tic = time.time()
            metrics["test/knn_top1"] = knn_accuracy(train_x, train_y, test_x, test_y, **config.get("knn", {}))
            timings["knn"] = round(time.time() - tic, 2)
    if "dense" in protocols:
        tic = time.time()
        cfg = config["dense"]
        train_loader, val_loader = dense_loaders(cfg)
        probe_kwargs = {k: cfg[k] for k in ("weight_decay", "max_iter") if k in cfg}
        result = dense_evaluation(
            backbone, train_loader, val_loader, cfg["num_classes"], device, cfg.get("feature_index"), **probe_kwargs
        )
        metrics.update(
            {
                "test/dense_cell_acc": result.cell_accuracy,
                "test/dense_miou": result.miou,
                "test/dense_pointing": result.pointing,
            }
        )
        timings["dense"] = round(time.time() - tic, 2)
    run_dir = next_version_dir(Path(runs_dir) / config.get("name", Path(config_path or "evaluate").stem))
    record = {
        "config": config_path,
        "scale": config.get("scale", "full"),
        "backbone": {"name": spec["name"], "kwargs": spec.get("kwargs") or {}, "checkpoint": spec.get("checkpoint")},
        "ckpt_path": spec.get("checkpoint"),
        "protocols": protocols,
        "val": {},
        "test": metrics,
        "timings": timings,
        "wall_seconds": round(time.time() - started, 2),
        "finished": True,
    }
    atomic_write_json(run_dir / "metrics.json", record)
    return record, run_dir


def format_table(record: dict) -> str:
    rows = [("protocol", "metric", "value")]
    for key, value in record["test"].items():
        rows.append((key.split("/")[1].split("_")[0], key, f"{value:.4f}"))
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)) for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    backbone = record["backbone"]
    source = backbone["checkpoint"] or "random init"
    return f"backbone {backbone['name']} ({source}), {record['wall_seconds']:.1f} s\n" + "\n".join(lines)


def main(argv: list[str]) -> int:
    parser = OneLineArgumentParser(prog="python -m experiments evaluate", description=__doc__, allow_abbrev=False,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument("--config", required=True)
    parser.add_argument("--ckpt", default=None, help="checkpoint (file or glob) to load; default: the config's")
    parser.add_argument("--backbone", default=None, help="timm backbone name (default: the config's)")
    parser.add_argument("--backbone_kwargs", default=None, help="YAML mapping replacing the config's kwargs")
    parser.add_argument("--random_init", action="store_true", help="ignore any configured checkpoint")
    parser.add_argument("--protocols", default=None, help=f"comma-separated subset of {','.join(PROTOCOLS)}")
    parser.add_argument("--runs_dir", default="runs")
    parser.add_argument("--run_name", default=None, help="run folder name (default: the config's name)")
    parser.add_argument("--device", default=None, help="auto | cpu | cuda (default: the config's)")
    args = parser.parse_args(canonical_flags(argv, parser._option_string_actions, {"--runs": "--runs_dir"}, "evaluate"))
    from experiments.configs import load_config

    if not Path(args.config).is_file():
        raise ConfigError(f"evaluation config {args.config} does not exist")
    config = load_config(args.config)  # merged over its bases, ${oc.env:...} roots resolved, as fit
    backbone = config.setdefault("backbone", {})
    if args.backbone:
        backbone["name"] = args.backbone
    if args.backbone_kwargs is not None:
        backbone["kwargs"] = yaml.safe_load(args.backbone_kwargs) or {}
    if args.ckpt:
        backbone["checkpoint"] = args.ckpt
    if args.random_init:
        backbone["checkpoint"] = None
    if "name" not in backbone:
        raise ConfigError(f"{args.config}: backbone.name is not set (or give --backbone)")
    if args.protocols:
        config["protocols"] = [p.strip() for p in args.protocols.split(",") if p.strip()]
    if args.run_name:
        config["name"] = args.run_name
    if args.device:
        config["device"] = args.device
    record, run_dir = evaluate(config, args.config, args.runs_dir)
    print(format_table(record))
    print(f"metrics: {run_dir / 'metrics.json'}")
    return 0
