"""`reproduce` with seeded rows (`seeds: [...]`) and `--key value` overrides, and the table's mean ± std of seeds."""

import pytest
import yaml

import experiments.__main__ as experiments_main
import experiments.table
from experiments.errors import ConfigError
from experiments.table import load_table, render_table, reproduce_commands
from tests.experiments.test_table_and_data_check import write_metrics

PRE, MODEL = "configs/fake/pre.yaml", "configs/fake/model.yaml"
ROWS = [
    {"label": "seeded top-1", "config": MODEL, "pretrain": PRE, "metric": "test/top1", "paper": 1.0,
     "seeds": [0, 1, 2],
     "toy": {"pretrain": {"config": "configs/fake/toy_pre.yaml", "args": ["--run_name", "toy_pre"]},
             "after_pretrain": [{"stage": "predict", "config": "configs/fake/toy_cos.yaml"}],
             "config": "configs/fake/toy.yaml", "args": ["--run_name", "toy_a"]}},
    # the same commands as the row above: they run once
    {"label": "seeded top-5", "config": MODEL, "pretrain": PRE, "metric": "test/top5", "paper": None,
     "seeds": [0, 1, 2]},
    {"label": "plain", "config": "configs/fake/plain.yaml", "metric": "test/top1", "paper": None},
    {"label": "probe", "config": "configs/fake/probe.yaml", "stage": "evaluate", "pretrain": PRE,
     "metric": "test/linear_top1", "paper": None, "seeds": [1, 2]},
]  # fmt: skip


@pytest.fixture
def fake_table(tmp_path, monkeypatch):
    """A table 'fake' with seeded rows; returns a function that rewrites its rows."""
    tables = tmp_path / "tables"
    tables.mkdir()
    monkeypatch.setattr(experiments.table, "TABLES", tables)

    def write(rows=ROWS):
        (tables / "fake.yaml").write_text(yaml.safe_dump({"paper": "fake", "title": "Fake", "rows": rows}))

    write()
    return write


@pytest.fixture
def ran(monkeypatch):
    """The argument lists `reproduce` runs (nothing trains)."""
    commands = []
    monkeypatch.setattr(experiments_main, "run_command", lambda command, runs: commands.append((command, runs)))
    return commands


def test_seeded_rows_run_once_per_seed_with_the_overrides_and_shared_steps_once(fake_table, ran, tmp_path, capsys):
    runs = str(tmp_path / "runs")
    override = ["--trainer.max_epochs", "3", "--data.init_args.root=/data/tel"]
    assert experiments_main.main(["reproduce", "fake", "--scale", "full", "--runs", runs, *override]) == 0

    def pre(s):
        return ["fit", "--config", PRE, "--run_name", f"pre__seed{s}", "--seed_everything", str(s), *override]

    def model(s):
        return ["fit", "--config", MODEL, "--run_name", f"model__pre__seed{s}", "--model.init_args.pretrained",
                f"{runs}/pre__seed{s}/version_*/checkpoints/last.ckpt", "--test_after_fit", "true",
                "--seed_everything", str(s), *override]  # fmt: skip

    def probe(s):  # evaluate takes neither the overrides nor a seed flag
        return ["evaluate", "--config", "configs/fake/probe.yaml", "--run_name", f"probe__pre__seed{s}",
                "--ckpt", f"{runs}/pre__seed{s}/version_*/checkpoints/last.ckpt"]  # fmt: skip

    plain = ["fit", "--config", "configs/fake/plain.yaml", "--test_after_fit", "true", *override]
    expected = [plain, pre(0), model(0), pre(1), model(1), probe(1), pre(2), model(2), probe(2)]
    assert [command for command, _ in ran] == expected
    assert all(r == runs for _, r in ran)
    err = capsys.readouterr().err
    assert err.count("note: probe: overrides --trainer.max_epochs 3 --data.init_args.root=/data/tel not passed") == 2
    assert "note: probe: its evaluate step takes no --seed_everything" in err


def test_toy_seeds_rename_the_configured_run_names_and_pass_each_seeds_checkpoint(fake_table):
    seed0 = [
        "python -m experiments fit --config configs/fake/toy_pre.yaml --run_name toy_pre__seed0 --seed_everything 0",
        "python -m experiments predict --config configs/fake/toy_cos.yaml --model.init_args.pretrained "
        "'runs/toy_pre__seed0/version_*/checkpoints/last.ckpt' --run_name toy_cos__seed0 --seed_everything 0",
        "python -m experiments fit --config configs/fake/toy.yaml --run_name toy_a__seed0 --model.init_args.pretrained "
        "'runs/toy_pre__seed0/version_*/checkpoints/last.ckpt' --test_after_fit true --seed_everything 0",
    ]
    commands = reproduce_commands("fake", "toy")  # only the first row has a toy variant
    assert commands[:3] == seed0
    assert commands[3:] == [c.replace("seed0", "seed1").replace("everything 0", "everything 1") for c in seed0] + [
        c.replace("seed0", "seed2").replace("everything 0", "everything 2") for c in seed0
    ]


@pytest.mark.parametrize("argv", [["stray"], ["--trainer.max_epochs", "3", "stray"], ["--trainer.max_epochs"]])
def test_a_stray_argument_is_one_clear_error(fake_table, ran, argv, capsys):
    assert experiments_main.main(["reproduce", "fake", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: reproduce: '") and "is not part of a --key value override" in err
    assert len(err.splitlines()) == 1 and not ran


@pytest.mark.parametrize("argv", [["--run_name", "x"], ["--seed_everything", "1"]])
def test_overrides_that_would_mix_up_the_run_folders_or_seeds_are_refused(fake_table, ran, argv, capsys):
    assert experiments_main.main(["reproduce", "fake", *argv]) == 2
    assert "cannot be overridden" in capsys.readouterr().err and not ran


def test_table_prints_mean_and_sample_std_over_the_seed_runs(fake_table, tmp_path):
    runs = tmp_path / "runs"
    top1, top5 = {0: 1.0, 1: 2.0, 2: 4.0}, {0: 0.5, 1: 0.7}
    for seed in (0, 1, 2):
        metrics = {"test/top1": top1[seed], **({"test/top5": top5[seed]} if seed in top5 else {})}
        write_metrics(runs, f"model__pre__seed{seed}", 0, {"scale": "full", "finished": True, "test": metrics})
    write_metrics(runs, "probe__pre__seed1", 0, {"scale": "full", "finished": True, "test": {"test/linear_top1": 0.25}})
    write_metrics(runs, "probe__pre__seed2", 0, {"scale": "full", "finished": False, "test": {"test/linear_top1": 9}})
    table = render_table("fake", runs)
    lines = {line.split(" | ")[0].lstrip("| "): line for line in table.splitlines() if line.startswith("| ")}
    # 1, 2, 4: mean 7/3 = 2.33, sample std sqrt(((4/3)^2 + (1/3)^2 + (5/3)^2) / 2) = sqrt(7/3) = 1.53
    assert f"| 2.33 ± 1.53 (n=3) | full | {runs / 'model__pre__seed*'} |" in lines["seeded top-1"]
    # 0.5, 0.7: mean 0.60, sample std sqrt(2 * 0.1^2 / 1) = 0.14; seed 2's run has no top-5
    assert "| 0.60 ± 0.14 (n=2), 1 of 3 seeds missing (2) |" in lines["seeded top-5"]
    # seed 2's run did not finish
    assert "| 0.25 (n=1), 1 of 2 seeds missing (2) |" in lines["probe"]
    assert "not run" in lines["plain"]


@pytest.mark.parametrize("seeds", [[], [0, 0], [0.5], "0", [True]])
def test_bad_seeds_are_a_config_error_naming_the_file_and_row(fake_table, seeds):
    fake_table([{**ROWS[2], "seeds": seeds}])
    with pytest.raises(ConfigError, match=r"fake\.yaml: row 0 \('plain'\) has seeds .*distinct integers"):
        load_table("fake")


PLAIN_ROWS = [
    {"label": "first", "config": "configs/fake/first.yaml", "metric": "test/top1", "paper": None},
    {"label": "second", "config": "configs/fake/second.yaml", "metric": "test/top1", "paper": None, "seeds": [0, 1]},
]


def test_finished_steps_are_skipped_and_force_reruns_them(fake_table, ran, tmp_path, capsys):
    fake_table(PLAIN_ROWS)
    runs = tmp_path / "runs"
    done = {"config": "configs/fake/first.yaml", "scale": "full", "finished": True, "test": {"test/top1": 0.5}}
    write_metrics(runs, "first", 0, done)
    # a fit that finished without its test (killed during test) is not done; another config's run is not either
    write_metrics(runs, "second__seed0", 0, {**done, "config": "configs/fake/second.yaml", "test": {}})
    write_metrics(runs, "second__seed1", 0, done)
    assert experiments_main.main(["reproduce", "fake", "--scale", "full", "--runs", str(runs)]) == 0
    assert [command[2] for command, _ in ran] == ["configs/fake/second.yaml", "configs/fake/second.yaml"]
    assert f"done: first: {runs / 'first' / 'version_0'} already ran" in capsys.readouterr().err
    ran.clear()
    assert experiments_main.main(["reproduce", "fake", "--scale", "full", "--runs", str(runs), "--force"]) == 0
    assert len(ran) == 3


def test_a_failing_step_does_not_stop_the_others_and_is_summarised(fake_table, monkeypatch, tmp_path, capsys):
    fake_table(PLAIN_ROWS)
    attempted = []

    def run(command, runs):
        attempted.append(command)
        if "configs/fake/first.yaml" in command:
            raise RuntimeError("No supported gpu backend found!")
        if "1" in command[command.index("--seed_everything") + 1 :]:
            raise SystemExit(2)

    monkeypatch.setattr(experiments_main, "run_command", run)
    assert experiments_main.main(["reproduce", "fake", "--scale", "full", "--runs", str(tmp_path / "runs")]) == 1
    assert len(attempted) == 3
    err = capsys.readouterr().err
    assert "2 step(s) failed:" in err
    assert "first: RuntimeError: No supported gpu backend found!" in err and "second: SystemExit: 2" in err


def test_dry_run_prints_every_command_with_the_overrides_and_runs_nothing(fake_table, ran, tmp_path, capsys):
    runs = str(tmp_path / "runs")
    args = ["reproduce", "fake", "--scale", "full", "--runs", runs, "--dry-run", "--trainer.max_epochs", "3"]
    assert experiments_main.main(args) == 0
    assert ran == [] and not (tmp_path / "runs").exists()
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 9  # the same 9 steps as the real run above
    assert lines[0] == ("python -m experiments fit --config configs/fake/plain.yaml --test_after_fit true "
                        f"--trainer.max_epochs 3 --runs_dir {runs}  # plain")  # fmt: skip
    assert all(line.startswith("python -m experiments ") for line in lines)
    assert sum("--trainer.max_epochs 3" in line for line in lines) == 7  # every step but the 2 evaluate steps
