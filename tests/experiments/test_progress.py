"""Progress that shows in a file: ProgressLog's lines from a real tiny fit / validate / test, the terminal bar without
v_num, the choice between them, and plain progress lines for loops outside a Trainer."""

import re
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.loggers import CSVLogger
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from experiments.progress import (
    ProgressLog,
    SuiteProgressBar,
    batch_size_of,
    format_seconds,
    progress_callbacks,
    progress_lines,
)


class Tiny(L.LightningModule):
    monitor = "val/top1"

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = nn.functional.cross_entropy(self.net(x), y)
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def _eval(self, batch, stage):
        x, y = batch
        logits = self.net(x)
        self.log(f"{stage}/loss", nn.functional.cross_entropy(logits, y))
        self.log(f"{stage}/top1", (logits.argmax(1) == y).float().mean())

    def validation_step(self, batch, batch_idx):
        self._eval(batch, "val")

    def test_step(self, batch, batch_idx):
        self._eval(batch, "test")

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def loader(n: int, batch_size: int = 5) -> DataLoader:
    g = torch.Generator().manual_seed(n)
    return DataLoader(TensorDataset(torch.randn(n, 8, generator=g), torch.randint(0, 3, (n,), generator=g)),
                      batch_size=batch_size)  # fmt: skip


def trainer(callbacks, **kwargs) -> L.Trainer:
    options = dict(max_epochs=2, accelerator="cpu", logger=False, enable_checkpointing=False,
                   enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0)  # fmt: skip
    return L.Trainer(callbacks=callbacks, **{**options, **kwargs})


EPOCH = re.compile(
    r"^epoch (\d)/2  step (\d+)/16  loss \d\.\d+  val/top1 [\d.]+  val/loss [\d.]+  (\d+) samples/s  eta \d:\d\d:\d\d$"
)
STEP = re.compile(r"^epoch (\d)/2  step (\d+)/16  loss \d\.\d+  (\d+) samples/s  eta \d:\d\d:\d\d$")


def test_fit_prints_step_lines_and_one_line_per_epoch_then_validate_and_test_lines(capsys):
    L.seed_everything(0)
    model = Tiny()
    t = trainer([ProgressLog(every_n_steps=3)])
    t.fit(model, loader(40), loader(15))  # 8 batches of 5 per epoch, 2 epochs
    lines = capsys.readouterr().out.splitlines()
    epochs = [m for line in lines if (m := EPOCH.match(line))]
    steps = [m for line in lines if (m := STEP.match(line))]
    assert len(lines) == len(epochs) + len(steps), lines
    assert [(m[1], m[2]) for m in epochs] == [("1", "8"), ("2", "16")]
    assert [(m[1], m[2]) for m in steps] == [("1", "3"), ("1", "6"), ("2", "11"), ("2", "14")]
    assert all(int(m[3]) > 0 for m in epochs + steps)
    # the epoch line is printed after validation: it carries this epoch's monitored metric
    top1 = float(t.callback_metrics["val/top1"])
    assert f"val/top1 {top1:.4g}" in [line for line in lines if EPOCH.match(line)][-1]

    t.validate(model, loader(15), verbose=False)  # without Lightning's own table
    t.test(model, loader(10), verbose=False)
    val, test = capsys.readouterr().out.splitlines()
    assert re.fullmatch(r"val  val/top1 [\d.]+  val/loss [\d.]+  \(15 samples, \d+\.\d s\)", val), val
    assert re.fullmatch(r"test  test/loss [\d.]+  test/top1 [\d.]+  \(10 samples, \d+\.\d s\)", test), test


def test_default_interval_is_a_tenth_of_an_epoch_capped_at_50_steps(capsys):
    t = trainer([ProgressLog()], max_epochs=1)
    t.fit(Tiny(), loader(100))  # 20 batches: a line every 2, the 20th is the epoch line
    lines = capsys.readouterr().out.splitlines()
    assert [int(re.search(r"step (\d+)/", line)[1]) for line in lines] == [2, 4, 6, 8, 10, 12, 14, 16, 18, 20]
    assert "val/" not in lines[-1] and "loss" in lines[-1]
    log = ProgressLog()
    t = trainer([log], max_epochs=1, limit_train_batches=1.0, max_steps=2)
    t.fit(Tiny(), loader(100, batch_size=1))  # 100 batches per epoch, max_steps 2 sets the total
    assert log._every == 10
    assert [line[:20] for line in capsys.readouterr().out.splitlines()] == ["epoch 1/1  step 2/2 "]


def test_max_steps_sets_the_total_and_the_epoch_count(capsys):
    t = trainer([ProgressLog(every_n_steps=2)], max_epochs=-1, max_steps=5)
    t.fit(Tiny(), loader(20))  # 4 batches per epoch
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("epoch 1/2  step 2/5  ")
    assert lines[-1].startswith("epoch 2/2  step 5/5  ")


def test_only_rank_zero_prints(capsys, monkeypatch):
    monkeypatch.setattr(L.Trainer, "is_global_zero", property(lambda self: False))
    t = trainer([ProgressLog(every_n_steps=1)], max_epochs=1)
    t.fit(Tiny(), loader(10))
    assert capsys.readouterr().out == ""


def test_terminal_bar_drops_v_num(tmp_path):
    bar = SuiteProgressBar()
    t = trainer([bar], enable_progress_bar=True, logger=CSVLogger(str(tmp_path)), max_epochs=1)
    t.fit(Tiny(), loader(10))
    metrics = bar.get_metrics(t, t.lightning_module)
    assert "v_num" not in metrics and "train/loss" in metrics
    assert "v_num" in super(SuiteProgressBar, bar).get_metrics(t, t.lightning_module)


def test_progress_callbacks_follow_the_terminal():
    callbacks, disable = progress_callbacks(is_tty=False)
    assert [type(c) for c in callbacks] == [ProgressLog] and disable is True
    callbacks, disable = progress_callbacks(is_tty=True)
    assert [type(c) for c in callbacks] == [SuiteProgressBar] and disable is False


def test_progress_lines_outside_a_trainer(capsys):
    assert list(progress_lines(range(25), 25, "extract r18", "clip", is_tty=False, lines=4)) == list(range(25))
    lines = capsys.readouterr().out.splitlines()
    assert [line.split("  ")[0] for line in lines] == [
        "extract r18: 7/25 clips (28%)",
        "extract r18: 14/25 clips (56%)",
        "extract r18: 21/25 clips (84%)",
        "extract r18: 25/25 clips (100%)",
    ]
    assert "eta" in lines[0] and "eta" not in lines[-1]


def test_helpers():
    assert format_seconds(3723.4) == "1:02:03"
    assert batch_size_of({"meta": ["a"], "image": torch.zeros(6, 3), "target": torch.zeros(6)}) == 6
    assert batch_size_of([[], (torch.zeros(4, 2),)]) == 4 and batch_size_of(["x"]) == 0


def test_toy_data_writing_prints_a_start_and_an_end_line(tmp_path, capsys):
    from datamodules.toy import ensure_written
    from datamodules.toy.shapes import write_shapes_imagefolder

    options = dict(num_classes=3, train_per_class=4, eval_per_class=2, img_size=32, seed=7)
    root = ensure_written(tmp_path / "t", write_shapes_imagefolder, **options)
    start, end = capsys.readouterr().out.splitlines()
    files = sum(1 for p in root.rglob("*") if p.is_file() and p.name != ".toy-complete")
    assert files >= 3 * (4 + 2 + 2)
    assert start == f"toy data: writing shapes_imagefolder into {root} ..."
    assert re.fullmatch(
        rf"toy data: wrote shapes_imagefolder into {re.escape(str(root))}: {files} files, [\d.]+ s", end
    )
    ensure_written(root, write_shapes_imagefolder, **options)  # already there: silent
    assert capsys.readouterr().out == ""


def test_data_check_prints_toy_writing_and_check_lines(tmp_path, capsys):
    from experiments.data import main as data_main

    sizes = ["--data.toy_train_per_class", "4", "--data.toy_eval_per_class", "2", "--data.toy_num_classes", "3"]
    root = tmp_path / "toy"
    config = str(Path(__file__).resolve().parents[2] / "configs/visformer/toy.yaml")
    assert data_main(["check", "--config", config, "--data.root", str(root), *sizes]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith(f"toy data: writing shapes_imagefolder into {root}")
    assert lines[1].startswith(f"toy data: wrote shapes_imagefolder into {root}: ")
    assert lines[2].startswith(f"checking {root} (") and lines[2].endswith("decoding every file) ...")
    assert re.fullmatch(rf"dataset: {re.escape(str(root))} \(\w+, checked in [\d.]+ s\)", lines[3])
    assert lines[-1] == "0 problem(s)"
