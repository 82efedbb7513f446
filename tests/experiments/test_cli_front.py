"""The command line's front: fast --help, one-line errors naming the nearest key, no prefix matching, --log_level,
--debug, one spelling per flag, and suite errors from a DataLoader worker as one line with exit code 2."""

import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from PIL import Image

from experiments.__main__ import main, pop_global_flags
from experiments.errors import CorruptFileError, DataError, one_line
from experiments.logs import suite_logging

REPO = Path(__file__).resolve().parents[2]
TOY = "configs/visformer/toy.yaml"


@pytest.fixture
def run(capsys, monkeypatch, tmp_path):
    """``python -m experiments ARGS`` in-process from the repository root: (exit code, stdout, stderr)."""
    monkeypatch.chdir(REPO)

    def call(*args):
        try:
            code = main([*args, "--runs_dir", str(tmp_path / "runs")] if args[0] == "fit" else list(args))
        except SystemExit as exit_:
            code = exit_.code
        out, err = capsys.readouterr()
        return code, out, err

    return call


def error_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.strip()]


@pytest.mark.parametrize(
    ("argv", "key", "nearest"),
    [
        (["--trainer.max_epoch", "3"], "trainer.max_epoch", "trainer.max_epochs"),
        (["--data.init_args.batch_siz", "3"], "data.init_args.batch_siz", "data.init_args.batch_size"),
        (["--model.init_args.optim.base_lrr", "1"], "model.init_args.optim.base_lrr", "model.init_args.optim.base_lr"),
    ],
)
def test_a_misspelled_key_is_one_line_naming_the_nearest_key(run, tmp_path, argv, key, nearest):
    code, out, err = run("fit", "--config", TOY, *argv)
    lines = error_lines(err)
    assert code == 2 and len(lines) == 1, err
    assert lines[0].startswith(f"error: fit: unknown key '{key}' on the command line; did you mean {nearest}")
    assert not (tmp_path / "runs").exists()  # refused before anything ran: --trainer.max_epoch is no max_epochs


def test_a_misspelled_key_in_the_config_file_names_the_file(run, tmp_path):
    cfg = yaml.safe_load((REPO / TOY).read_text())
    cfg["model"]["init_args"]["label_smothing"] = cfg["model"]["init_args"].pop("label_smoothing")
    cfg["trainer"]["max_epoch"] = cfg["trainer"].pop("max_epochs")
    for section in ("model", "trainer"):
        bad = {**cfg, section: cfg[section]}
        other = "trainer" if section == "model" else "model"
        bad[other] = yaml.safe_load((REPO / TOY).read_text())[other]
        path = tmp_path / f"bad_{section}.yaml"
        path.write_text(yaml.safe_dump(bad))
        code, _, err = run("fit", "--config", str(path))
        lines = error_lines(err)
        key, nearest = {"model": ("model.init_args.label_smothing", "model.init_args.label_smoothing"),
                        "trainer": ("trainer.max_epoch", "trainer.max_epochs")}[section]  # fmt: skip
        assert code == 2 and len(lines) == 1, err
        assert f"unknown key '{key}' in {path}; did you mean {nearest}" in lines[0]


def test_a_wrong_value_is_one_line_without_the_union_dump(run):
    code, _, err = run("fit", "--config", TOY, "--trainer.max_epochs", "abc")
    lines = error_lines(err)
    assert code == 2 and len(lines) == 1 and "trainer.max_epochs" in lines[0] and "abc" in lines[0], err
    assert "Union subtypes" not in err


def test_debug_keeps_the_full_parser_message(run):
    code, _, err = run("fit", "--config", TOY, "--trainer.max_epochs", "abc", "--debug")
    assert code != 0 and "Does not validate against any of the Union subtypes" in err
    assert "EXPERIMENTS_DEBUG" not in os.environ  # restored after the command


@pytest.mark.parametrize("command", ["table", "bench", "evaluate", "rate_curve", "reproduce"])
def test_help_answers_without_importing_torch(command):
    start = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "experiments", command, "--help"], cwd=REPO, capture_output=True,
                         text=True, timeout=60)  # fmt: skip
    assert out.returncode == 0 and out.stdout.startswith(f"usage: python -m experiments {command}"), out.stderr
    assert time.perf_counter() - start < 3.0
    probe = (f"import sys, experiments.{command if command not in ('table', 'reproduce') else '__main__'}; "
             "print('torch' in sys.modules, 'lightning' in sys.modules)")  # fmt: skip
    assert subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True).stdout.split() == [
        "False",
        "False",
    ]


def test_global_flags_are_taken_from_anywhere():
    argv = ["--log_level", "warning", "table", "tel", "--debug", "--scale=toy", "--log_level=DEBUG", "--", "--debug"]
    assert pop_global_flags(argv) == (["table", "tel", "--scale=toy", "--", "--debug"], "DEBUG", True)


def test_a_bad_log_level_is_one_line(run):
    code, _, err = run("table", "tel", "--log_level", "LOUD")
    assert code == 2 and error_lines(err) == ["error: --log_level 'LOUD': choose one of DEBUG, INFO, WARNING, ERROR"]


def test_log_level_sets_the_suite_loggers_and_lightning_prints_once(capsys):
    with suite_logging("INFO"):
        logging.getLogger("datamodules.images").info("read %d images", 3)
        logging.getLogger("lightning.pytorch.utilities.rank_zero").info("GPU available: False, used: False")
        logging.getLogger("lightning.pytorch.utilities.rank_zero").info("💡 Tip: For seamless cloud logging ...")
        logging.getLogger("timm.models").info("a third-party INFO line stays hidden")
    out, err = capsys.readouterr()
    assert err == "INFO datamodules.images: read 3 images\n"
    assert out == "GPU available: False, used: False\n"  # once, plain, on stdout; the tip dropped
    with suite_logging("WARNING"):
        logging.getLogger("lightning_modules.x").info("hidden")
        logging.getLogger("lightning.pytorch.x").info("hidden too")
        logging.getLogger("experiments.x").warning("shown")
    out, err = capsys.readouterr()
    assert (out, err) == ("", "WARNING experiments.x: shown\n")
    logging.getLogger("datamodules.images").info("after the command: back to the default (not printed)")
    assert capsys.readouterr().err == ""


def test_deprecated_runs_flag_still_works_with_one_deprecation_line(run, tmp_path):
    code, out, err = run("table", "tel", "--runs", str(tmp_path / "empty"), "--scale", "toy")
    assert code == 0 and "not run" in out
    assert error_lines(err) == ["table: --runs is deprecated; use --runs_dir"]
    code, out, err = run("reproduce", "tel", "--runs", str(tmp_path / "r"), "--dry-run")
    assert code == 0 and f"--runs_dir {tmp_path / 'r'}" in out
    assert {
        "reproduce: --runs is deprecated; use --runs_dir",
        "reproduce: --dry-run is deprecated; use --dry_run",
    } <= set(error_lines(err))


def test_bench_old_batch_size_flag_and_a_missing_config_are_one_line_each(run):
    code, _, err = run("bench", "--config", "missing.yaml", "--batch-size", "4", "--loader-batches", "0")
    assert code == 2
    assert error_lines(err) == [
        "bench: --batch-size is deprecated; use --data.batch_size",
        "bench: --loader-batches is deprecated; use --loader_batches",
        "error: config 'missing.yaml' does not exist",
    ]


def test_keyboard_interrupt_ends_with_one_line(run, monkeypatch):
    import experiments.__main__ as entry

    def interrupted(command, rest):
        raise KeyboardInterrupt

    monkeypatch.setattr(entry, "dispatch", interrupted)
    code, _, err = run("table", "tel")
    assert code == 130 and error_lines(err) == ["interrupted"]


def test_an_error_from_a_dataloader_worker_keeps_its_own_message():
    from torch._utils import ExceptionWrapper

    try:
        raise CorruptFileError("/data/a.JPEG: cannot decode image (truncated). Replace or delete the file.")
    except CorruptFileError:
        wrapper = ExceptionWrapper(where="in DataLoader worker process 0")
    with pytest.raises(CorruptFileError) as caught:
        wrapper.reraise()
    assert "Original Traceback" in str(caught.value)
    assert one_line(caught.value) == "/data/a.JPEG: cannot decode image (truncated). Replace or delete the file."
    assert one_line(DataError("two\n  lines")) == "two lines"


def write_image_folder(root: Path) -> Path:
    """2 classes x 4 tiny JPEGs per split; one training JPEG is corrupt (returned)."""
    for split in ("train", "val", "test"):
        for label, colour in enumerate(("red", "blue")):
            folder = root / split / f"n0{label}"
            folder.mkdir(parents=True)
            for i in range(4):
                Image.new("RGB", (16, 16), colour).save(folder / f"{i}.JPEG")
    corrupt = root / "train" / "n00" / "0.JPEG"
    corrupt.write_bytes(b"\xff\xd8\xff\xe0 not a jpeg")
    return corrupt


def test_a_corrupt_image_read_in_a_worker_ends_the_fit_with_one_line(tmp_path, monkeypatch):
    corrupt = write_image_folder(tmp_path / "images")
    args = ["fit", "--config", TOY, "--runs_dir", str(tmp_path / "runs"), "--data.init_args.dataset", "imagenet",
            "--data.init_args.root", str(tmp_path / "images"), "--data.init_args.num_workers", "2",
            "--data.init_args.on_corrupt", "raise", "--data.init_args.batch_size", "4",
            "--model.init_args.net.init_args.num_classes", "2", "--model.init_args.optim.warmup_epochs", "0",
            "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "2", "--trainer.limit_val_batches", "1",
            "--trainer.log_every_n_steps", "1", "--trainer.num_sanity_val_steps", "0"]  # fmt: skip
    # 2 workers: the read happens in a worker, and neither Lightning ("does not have many workers", with > 2 CPUs)
    # nor torch (more workers than CPUs) warns on a machine with 2 or more cores
    out = subprocess.run([sys.executable, "-m", "experiments", *args], cwd=REPO, capture_output=True, text=True,
                         timeout=300, env={**os.environ, "HF_HUB_OFFLINE": "1"})  # fmt: skip
    lines = error_lines(out.stderr)
    assert out.returncode == 2 and len(lines) == 1, out.stderr
    assert lines[0].startswith(f"error: {corrupt}: cannot decode image") and "on_corrupt: skip" in lines[0]
    # --debug: the exception itself, which Python prints with its traceback (the worker's traceback inside)
    monkeypatch.chdir(REPO)
    with pytest.raises(CorruptFileError, match=r"Caught CorruptFileError in DataLoader worker process \d"):
        main([*args, "--debug"])


@pytest.mark.parametrize(
    ("argv", "line"),
    [
        (["fitt"], "error: unknown command 'fitt'; did you mean fit? (python -m experiments --help)"),
        (["bench", "--config", TOY, "--stepss", "3"], "error: bench: unrecognized arguments: --stepss; did you mean "
                                                      "--steps?"),
        (["evaluate", "--config", "x.yaml", "--ckptt", "c"], "error: evaluate: unrecognized arguments: --ckptt c; did "
                                                             "you mean --ckpt?"),
        (["table", "tel", "--scale", "tiny"], "error: table: argument --scale: invalid choice: 'tiny'"),
        (["rate_curve", "--out", "x.png"], "error: rate_curve: the following arguments are required: --runs_dir"),
    ],
)  # fmt: skip
def test_the_other_commands_parse_errors_are_one_line(run, argv, line):
    code, _, err = run(*argv)
    assert code == 2 and len(error_lines(err)) == 1 and err.startswith(line), err
