"""The suite's one-spelling-per-flag rule: old spellings are rewritten with one deprecation line each."""

from experiments.flags import canonical_flags


def test_hyphenated_and_aliased_flags_become_the_current_spelling(capsys):
    argv = ["--run-name", "a", "--runs=out", "--dry-run", "--run-name", "b", "--keep-me", "--", "--run-name"]
    out = canonical_flags(argv, known={"--run_name", "--dry_run", "--runs_dir"}, aliases={"--runs": "--runs_dir"},
                          prog="launch")  # fmt: skip
    assert out == ["--run_name", "a", "--runs_dir=out", "--dry_run", "--run_name", "b", "--keep-me", "--", "--run-name"]
    lines = capsys.readouterr().err.splitlines()
    assert lines == [
        "launch: --run-name is deprecated; use --run_name",
        "launch: --runs is deprecated; use --runs_dir",
        "launch: --dry-run is deprecated; use --dry_run",
    ]


def test_current_spellings_pass_through_silently(capsys):
    argv = ["--run_name", "x", "--trainer.max_epochs", "3", "value-with-hyphen"]
    assert canonical_flags(argv, known={"--run_name"}) == argv
    assert capsys.readouterr().err == ""
