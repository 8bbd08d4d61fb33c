"""Tuning each model (python -m lmzoo.tune), the final comparison at the tuned values, and sweeps run in
parallel (hydra/launcher=parallel) and through submitit (hydra/launcher=submitit_local), at tiny budgets."""

import importlib
import json
import math
import shlex
import sqlite3
import sys

import optuna
import pytest
import yaml
from helpers import REPO, SHAKESPEARE, compose_config, markdown_tables, run

from lmzoo.reports.tune import edge_warnings, pruning_warnings
from lmzoo.training.tune import TRIALS_DIR, TuneSettings, tune_model

# bigram and mlp are tiny as they are; a few steps of 4 windows of 32 tokens, validated twice.
TINY_RUN = ["trainer.max_steps=4", "trainer.val_check_interval=2", "data.batch_size=4", "data.val_batches=2",
            "block_size=32", "trainer.enable_progress_bar=false", "trainer.enable_model_summary=false"]


def offline(tmp_path):
    return [f"data.path={SHAKESPEARE}", f"paths.data_dir={tmp_path / 'data'}"]


def test_a_killed_tune_continues_its_study_rerunning_the_trial_it_was_in(tmp_path):
    folder = tmp_path / "tune"
    cfg = compose_config("tune", *offline(tmp_path), *TINY_RUN, "model=bigram", f"paths.output_dir={folder}")
    settings = TuneSettings(folder=str(folder), trials=2, seed=0, search={"optim": {"lr": [1e-3, 1e-1]}},
                            prune_after=None, final_seeds=3, final=[])
    folder.mkdir()
    tune_model(cfg, settings, "bigram", folder)
    # A kill -9 in the middle of a third trial leaves it marked running in the study.
    killed = optuna.load_study(study_name="bigram", storage=f"sqlite:///{folder / 'study.db'}").ask(
        {"optim.lr": optuna.distributions.FloatDistribution(1e-3, 1e-1, log=True)})
    settings.trials = 3
    study = tune_model(cfg, settings, "bigram", folder)
    states = [trial.state.name for trial in study.trials]
    assert states == ["COMPLETE", "COMPLETE", "FAIL", "COMPLETE"]
    # The killed trial ran again with its values; the two finished ones were not run again.
    assert study.trials[3].params == killed.params
    assert sorted(p.name for p in (folder / TRIALS_DIR).iterdir()) == ["0", "1", "3"]
    assert json.loads((folder / "trials.json").read_text())["trials"][3]["value"] == study.trials[3].value
    with sqlite3.connect(folder / "study.db") as db:
        assert db.execute("select count(*) from trials").fetchone() == (4,)


def test_the_first_trials_spread_over_the_whole_range_then_tpe_takes_over(tmp_path, monkeypatch):
    """Four random draws may all miss a decade: the first trials put one learning rate in each quarter of the
    log-range, the middle of each, and later trials come from TPE."""
    folder = tmp_path / "tune"
    cfg = compose_config("tune", *offline(tmp_path), *TINY_RUN, "trainer.max_steps=2", "model=bigram",
                         f"paths.output_dir={folder}")
    settings = TuneSettings(folder=str(folder), trials=5, seed=0, search={"optim": {"lr": [1e-4, 1e-0]}},
                            prune_after=None, final_seeds=3, final=[])
    folder.mkdir()
    monkeypatch.setattr("lmzoo.training.tune.STARTUP_TRIALS", 4)
    study = tune_model(cfg, settings, "bigram", folder)
    assert sorted(math.log10(trial.params["optim.lr"]) for trial in study.trials[:4]) == pytest.approx(
        [-3.5, -2.5, -1.5, -0.5])
    assert [trial.state.name for trial in study.trials] == ["COMPLETE"] * 5
    assert isinstance(study.sampler, optuna.samplers.TPESampler)


@pytest.mark.parametrize("val_check_interval", [2, 4])
def test_a_hopeless_trial_is_pruned_at_a_validation_before_its_end(tmp_path, val_check_interval):
    """Two trials at sound learning rates, then one at a rate that learns nothing: worse than both at step 2, it
    stops there. Validating only at the last step leaves the pruner nothing to act on, and the report says so."""
    folder = tmp_path / "tune"
    cfg = compose_config("tune", *offline(tmp_path), *TINY_RUN, f"trainer.val_check_interval={val_check_interval}",
                         "model=bigram", "optim.min_lr=0", f"paths.output_dir={folder}")
    settings = TuneSettings(folder=str(folder), trials=3, seed=0, search={"optim": {"lr": [1e-9, 1e-0]}},
                            prune_after=2, final_seeds=3, final=[])
    folder.mkdir()
    queued = optuna.create_study(study_name="bigram", storage=f"sqlite:///{folder / 'study.db'}")
    for lr in (1e-1, 3e-1, 1e-9):
        queued.enqueue_trial({"optim.lr": lr})
    study = tune_model(cfg, settings, "bigram", folder)
    records = json.loads((folder / "trials.json").read_text())
    warnings = pruning_warnings(records)
    if val_check_interval == 2:
        assert [trial.state.name for trial in study.trials] == ["COMPLETE", "COMPLETE", "PRUNED"]
        assert [trial["last_step"] for trial in records["trials"]] == [4, 4, 2] and warnings == []
    else:
        assert [trial.state.name for trial in study.trials] == ["COMPLETE"] * 3
        assert warnings == ["warning: model=bigram: no trial could be pruned before its end, as each validated only "
                            "at its last step (4); validate more often for the pruner to act: "
                            "trainer.val_check_interval=1"]


def test_a_best_value_at_the_edge_of_its_range_is_named_with_the_range_to_search():
    search = {"optim.lr": {"key": "optim.lr", "low": 1e-4, "high": 1e-2, "log": True, "integer": False, "choices": None}}
    trials = [{"number": n, "state": "COMPLETE", "params": {"optim.lr": lr}, "value": loss, "last_loss": loss}
              for n, (lr, loss) in enumerate([(1e-4, 3.0), (1e-3, 2.5), (9e-3, 2.0)])]
    assert edge_warnings({"model": "gpt", "search": search, "trials": trials}) == [
        "warning: model=gpt: the best optim.lr=0.009 lies at the upper edge of the range searched [0.0001, 0.01]; "
        "widen it: tune.search.optim.lr=[0.0001,0.1]"]
    trials[1]["value"] = 1.0
    assert edge_warnings({"model": "gpt", "search": search, "trials": trials}) == []


def test_tune_then_the_final_comparison_at_the_tuned_values_four_jobs_at_once(tmp_path, monkeypatch, capsys):
    """python -m lmzoo.tune (in this process), then the command it printed, as typed, with hydra/launcher=parallel:
    2 models x 2 fresh seeds, 4 jobs at once."""
    tune_dir = tmp_path / "tune"
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["tune", "model=bigram,mlp", "tune.trials=1", "tune.final_seeds=2", *TINY_RUN,
                                      *offline(tmp_path), f"hydra.sweep.dir={tune_dir}"])
    importlib.import_module("lmzoo.tune").main()
    best = yaml.safe_load((tune_dir / "tuned.yaml").read_text())
    assert set(best) == {"bigram", "mlp"} and all(1e-4 <= values["optim.lr"] <= 3e-2 for values in best.values())
    assert all((job / "loss_vs_settings.png").is_file() for job in tune_dir.glob("*_model-*"))
    command = next(line for line in capsys.readouterr().out.splitlines()[::-1] if line.startswith("final comparison: "))
    words = shlex.split(command.removeprefix("final comparison: "))
    assert words[:4] == ["python", "-m", "lmzoo.train", "-m"] and "seed=1,2" in words
    assert f"python -m lmzoo.train -m model=bigram,mlp seed=1,2 tuned={tune_dir / 'tuned.yaml'}" in (
        tune_dir / "tune.md").read_text()
    final_dir = tmp_path / "final"
    run(*words[2:], "hydra/launcher=parallel", "hydra.launcher.n_jobs=4", f"hydra.sweep.dir={final_dir}", cwd=tmp_path)
    ranked, runs = markdown_tables((final_dir / "comparison.md").read_text())
    assert {row["model"]: row["tuned"] for row in ranked} == {
        model: f"optim.lr={values['optim.lr']:.3g}" for model, values in best.items()}
    assert sorted((row["model"], row["seed"], row["status"]) for row in runs) == [
        (model, seed, "done") for model in ("bigram", "mlp") for seed in ("1", "2")]
    provenance = json.loads(next(final_dir.glob("*model-mlp*")).joinpath("provenance.json").read_text())
    assert provenance["config"]["optim"]["lr"] == best["mlp"]["optim.lr"]


@pytest.mark.slow
def test_a_sweep_runs_through_submitit(tmp_path):
    """The SLURM path (hydra/launcher=slurm) on this machine: submitit's local executor."""
    sweep_dir = tmp_path / "sweep"
    run("lmzoo.train", "-m", "model=bigram", "seed=1,2", "hydra/launcher=submitit_local", *TINY_RUN, *offline(tmp_path),
        f"hydra.sweep.dir={sweep_dir}", cwd=tmp_path)
    _, runs = markdown_tables((sweep_dir / "comparison.md").read_text())
    assert [(row["seed"], row["status"]) for row in runs] == [("1", "done"), ("2", "done")]


def test_the_reference_experiment_composes_both_commands_and_runs_at_a_tiny_budget(tmp_path, monkeypatch):
    tune = compose_config("tune", "experiment=reference_tune", return_hydra_config=True)
    final = compose_config("train", "experiment=reference", return_hydra_config=True)
    # The tune: one job per architecture at the smaller budget, with a seed apart from the comparison's.
    assert tune.hydra.sweeper.params.model == final.hydra.sweeper.params.model
    assert set(final.hydra.sweeper.params.model.split(",")) == {path.stem for path in (REPO / "conf" / "model").glob("*.yaml")}
    assert (tune.hydra.sweeper.params.seed, final.hydra.sweeper.params.seed) == ("1337", "1,2,3")
    # The tune's fixed folder is where the comparison reads its tuned values.
    assert f"{tune.hydra.sweep.dir}/tuned.yaml" == final.tuned == "outputs/tunes/reference/tuned.yaml"
    assert final.hydra.sweeper.params["budget.flops"] == "1.5e12,1.5e13" and list(tune.tune.final) == ["experiment=reference"]
    # The comparison, cut to one model, seed and tiny budget on the command line.
    (tmp_path / "tuned.yaml").write_text("bigram:\n  optim.lr: 0.02\n")
    sweep_dir = tmp_path / "reference"
    monkeypatch.setattr(sys, "argv", ["train", "-m", "experiment=reference", f"tuned={tmp_path / 'tuned.yaml'}",
                                      "model=bigram", "seed=1", "budget.flops=5e6", "data.val_batches=2", *TINY_RUN[4:],
                                      *offline(tmp_path),
                                      f"hydra.sweep.dir={sweep_dir}"])
    importlib.import_module("lmzoo.train").main()
    ranked, runs = markdown_tables((sweep_dir / "comparison.md").read_text())
    assert [(row["model"], row["tuned"]) for row in ranked] == [("bigram", "optim.lr=0.02")]
    # bigram's 390 FLOPs a token, 16 windows of 32 tokens a step: 5e6 FLOPs buy 25 steps.
    assert runs[0]["steps"] == "25"
