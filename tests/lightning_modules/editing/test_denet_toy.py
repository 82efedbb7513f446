"""DE-Net on the toy recolour scenes (CPU, about a minute and a half): DAMSM pre-training, then DE-Net; the edited
images show the colour the target caption names (by the toy's own colour classifier, not by any model) far more
often than the sources do, the background changes much less than the object, and the editing grid is written."""

from __future__ import annotations

import json

from datamodules.captions import TextEditingDataModule
from datamodules.toy.edit_scenes import score_edits
from experiments.cli import main as cli_main
from lightning_modules.editing.module import DENet, evaluate_toy_edits

COMMON = ["--data.init_args.num_workers", "0", "--trainer.enable_progress_bar", "false"]


def run_toy(tmp_path, damsm_epochs: int = 6, denet_epochs: int = 20, seed: int = 0, extra=()) -> dict:
    root, runs = tmp_path / "data", tmp_path / "runs"
    cli_main(["fit", "--config", "configs/denet/toy_damsm.yaml", "--runs_dir", str(runs), "--run_name", "damsm",
              "--data.init_args.root", str(root), "--trainer.max_epochs", str(damsm_epochs), *COMMON])  # fmt: skip
    damsm = json.loads(next((runs / "damsm").glob("version_*/metrics.json")).read_text())
    cli_main(["fit", "--config", "configs/denet/toy.yaml", "--runs_dir", str(runs), "--run_name", "denet",
              "--seed_everything", str(seed), "--data.init_args.root", str(root),
              "--model.init_args.damsm.init_args.checkpoint",
              str(runs / "damsm" / "version_*" / "checkpoints" / "best.ckpt"),
              "--trainer.max_epochs", str(denet_epochs), "--trainer.check_val_every_n_epoch", str(denet_epochs),
              *COMMON, *extra])  # fmt: skip
    run = next((runs / "denet").glob("version_*"))
    model = DENet.load_from_checkpoint(run / "checkpoints" / "last.ckpt", map_location="cpu")
    dm = TextEditingDataModule(root=str(root), dataset="toy", image_size=16, val_images=40, batch_size=50,
                               num_workers=0, pin_memory=False, toy_img_size=16)  # fmt: skip
    scores = evaluate_toy_edits(model, dm, score_edits)
    return {"scores": scores, "damsm_val": damsm["val"], "run": run, "metrics": json.loads((run / "metrics.json")
            .read_text())}  # fmt: skip


def test_toy_denet_recolours_the_named_object(tmp_path):
    out = run_toy(tmp_path)
    s = out["scores"]
    print(f"toy DE-Net: target colour in {100 * s['success_edited']:.0f}% of edits vs {100 * s['success_source']:.0f}%"
          f" of sources; pixel change inside {s['diff_inside']:.3f}, outside {s['diff_outside']:.3f}")  # fmt: skip
    assert out["damsm_val"]["val/r1_in_batch"] > 3 * out["damsm_val"]["val/chance_r1"]
    assert s["success_source"] == 0.0  # every target names another colour
    assert s["success_edited"] > 0.5, s  # chance for a random recolour: 1/5
    assert s["diff_outside"] < 0.5 * s["diff_inside"] and s["diff_outside"] < 0.2, s
    assert list(out["run"].glob("pictures/val_editing_epoch*.png"))
    assert 0 < out["metrics"]["val"]["val/mp"] < 1
