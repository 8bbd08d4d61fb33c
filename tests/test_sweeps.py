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

from lmzoo.reports.tune import edge_warnings, final_seeds, pruning_note
from lmzoo.training.choice import choose
from lmzoo.training.plan import Command, settle
from lmzoo.training.search import TuneSettings
from lmzoo.training.tune import TRIALS_DIR, tune_model
from lmzoo.training.tuned import tuned_entry

# bigram and mlp are tiny as they are; a few steps of 4 windows of 32 tokens, validated twice.
TINY_RUN = ["trainer.max_steps=4", "trainer.val_check_interval=2", "data.batch_size=4", "data.val_batches=2",
            "block_size=32", "trainer.enable_progress_bar=false", "trainer.enable_model_summary=false"]


def offline(tmp_path):
    return [f"data.path={SHAKESPEARE}", f"paths.data_dir={tmp_path / 'data'}"]


def settings(trials, search, prune_after=None, **more):
    """The tune: block's defaults with these values."""
    return TuneSettings(folder="unused", trials=trials, search=search, prune_after=prune_after, **more)


def test_a_killed_tune_continues_its_study_rerunning_the_trial_it_was_in(tmp_path):
    folder = tmp_path / "tune"
    cfg = compose_config("tune", *offline(tmp_path), *TINY_RUN, "model=bigram", f"paths.output_dir={folder}")
    tune = settings(2, {"optim": {"lr": [1e-3, 1e-1]}})
    folder.mkdir()
    tune_model(cfg, tune, "bigram", folder)
    # A kill -9 in the middle of a third trial leaves it marked running in the study.
    killed = optuna.load_study(study_name="bigram", storage=f"sqlite:///{folder / 'study.db'}").ask(
        {"optim.lr": optuna.distributions.FloatDistribution(1e-3, 1e-1, log=True)})
    tune.trials = 3
    study = tune_model(cfg, tune, "bigram", folder)
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
    folder.mkdir()
    monkeypatch.setattr("lmzoo.training.tune.STARTUP_TRIALS", 4)
    study = tune_model(cfg, settings(5, {"optim": {"lr": [1e-4, 1e-0]}}), "bigram", folder)
    assert sorted(math.log10(trial.params["optim.lr"]) for trial in study.trials[:4]) == pytest.approx(
        [-3.5, -2.5, -1.5, -0.5])
    assert [trial.state.name for trial in study.trials] == ["COMPLETE"] * 5
    assert isinstance(study.sampler, optuna.samplers.TPESampler)


@pytest.mark.parametrize("val_check_interval", [2, 4])
def test_a_hopeless_trial_is_pruned_at_a_check_before_its_end_however_seldom_runs_validate(tmp_path,
                                                                                          val_check_interval):
    """Two trials at sound learning rates, then one at a rate that learns nothing: worse than both at the first of
    its checks (steps 1, 2, 3 of 4), it stops there, also when the runs validate only at their last step."""
    folder = tmp_path / "tune"
    cfg = compose_config("tune", *offline(tmp_path), *TINY_RUN, f"trainer.val_check_interval={val_check_interval}",
                         "model=bigram", "optim.min_lr=0", f"paths.output_dir={folder}")
    folder.mkdir()
    queued = optuna.create_study(study_name="bigram", storage=f"sqlite:///{folder / 'study.db'}")
    for lr in (1e-1, 3e-1, 1e-9):
        queued.enqueue_trial({"optim.lr": lr})
    study = tune_model(cfg, settings(3, {"optim": {"lr": [1e-9, 1e-0]}}, prune_after=2), "bigram", folder)
    records = json.loads((folder / "trials.json").read_text())
    assert [trial.state.name for trial in study.trials] == ["COMPLETE", "COMPLETE", "PRUNED"]
    assert [(trial["steps"], trial["pruned_at"], trial["checks"]) for trial in records["trials"]] == [
        (4, None, 3), (4, None, 3), (4, 1, 1)]
    assert pruning_note(records) == ("Pruning stopped 1 of 3 trials, at step 1 of 4: 3 of 12 trial steps not trained "
                                     "(25%).")


def test_the_checks_leave_a_trials_result_as_it_is_without_them(tmp_path):
    """The checks evaluate in eval mode without gradients: mlp's BatchNorm keeps its running statistics, no random
    draw moves, and a trial that is not pruned ends with the loss it has unchecked."""
    values = []
    for prune_after in (None, 100):
        folder = tmp_path / f"prune_after_{prune_after}"
        cfg = compose_config("tune", *offline(tmp_path), *TINY_RUN, "model=mlp",
                             f"paths.output_dir={folder}")
        folder.mkdir()
        study = tune_model(cfg, settings(2, {"optim": {"lr": [1e-3, 1e-1]}}, prune_after=prune_after), "mlp", folder)
        values.append([(trial.params, trial.value, len(trial.intermediate_values)) for trial in study.trials])
    assert [[(params, value) for params, value, _ in trials] for trials in values] == [
        [(params, value) for params, value, _ in values[0]]] * 2
    assert [checks for _, _, checks in values[0]] == [0, 0] and [checks for _, _, checks in values[1]] == [3, 3]


def test_a_best_value_at_the_edge_of_its_range_is_named_with_the_range_to_search():
    search = {"optim.lr": {"key": "optim.lr", "low": 1e-4, "high": 1e-2, "log": True, "integer": False, "choices": None}}
    trials = [{"number": n, "state": "COMPLETE", "params": {"optim.lr": lr}, "value": loss, "last_loss": loss}
              for n, (lr, loss) in enumerate([(1e-4, 3.0), (1e-3, 2.5), (9e-3, 2.0)])]
    assert edge_warnings({"model": "gpt", "search": search, "trials": trials}) == [
        "warning: model=gpt: the best optim.lr=0.009 lies at the upper edge of the range searched [0.0001, 0.01]; "
        "widen it: tune.search.optim.lr=[0.0001,0.1]"]
    trials[1]["value"] = 1.0
    assert edge_warnings({"model": "gpt", "search": search, "trials": trials}) == []


def tune_main(monkeypatch, *overrides):
    """python -m lmzoo.tune OVERRIDES, in this process."""
    monkeypatch.setattr(sys, "argv", ["tune", *overrides])
    importlib.import_module("lmzoo.tune").main()


def test_more_trials_in_a_tunes_folder_are_added_to_each_models_one_study(tmp_path, monkeypatch, capsys):
    """Raising tune.trials in the same folder adds trials to the model's study (README's promise): one folder, one
    study, one section in tune.md. Trials of other settings, or of another search, would not be trials of that
    study: refused in one line, every file of the folder left as it was."""
    tune_dir = tmp_path / "tune"
    command = ["model=bigram", *TINY_RUN, *offline(tmp_path), f"tune.folder={tune_dir}"]
    tune_main(monkeypatch, *command, "tune.trials=1")
    tune_main(monkeypatch, *command, "tune.trials=2")
    assert sorted(path.name for path in tune_dir.iterdir() if path.is_dir()) == ["model-bigram"]
    study = optuna.load_study(study_name="bigram", storage=f"sqlite:///{tune_dir / 'model-bigram' / 'study.db'}")
    assert [trial.state.name for trial in study.trials] == ["COMPLETE", "COMPLETE"]
    assert (tune_dir / "tune.md").read_text().count("### bigram") == 1
    before = {path: path.read_bytes() for path in tune_dir.glob("**/*") if path.is_file()}
    capsys.readouterr()
    with pytest.raises(SystemExit) as stopped:
        tune_main(monkeypatch, *command, "tune.trials=3", "optim.weight_decay=0.5")
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error: ")]
    assert stopped.value.code == 2 and errors == [
        f"error: {tune_dir / 'model-bigram'} holds the study of model=bigram, whose trials trained with "
        "optim.weight_decay=0.1 (this command: optim.weight_decay=0.5); add trials to it with those settings, or tune "
        "it in another tune.folder"]
    with pytest.raises(SystemExit) as stopped:
        tune_main(monkeypatch, *command, "tune.trials=3", "tune.search.optim.lr=[1e-3,1e-1]")
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error: ")]
    assert stopped.value.code == 2 and errors == [
        f"error: {tune_dir / 'model-bigram'} holds the study of model=bigram over tune.search optim.lr=[0.0001,0.03], "
        "not optim.lr=[0.001,0.1]; add trials to it with that search, or tune it in another tune.folder"]
    # Refused before Hydra wrote its multirun.yaml and the study folder's .hydra/.
    assert {path: path.read_bytes() for path in tune_dir.glob("**/*") if path.is_file()} == before


def trials_on(losses: dict, seed=1337, first=0) -> list[dict]:
    return [{"number": number, "state": "COMPLETE", "params": {"optim.lr": lr}, "value": loss, "last_loss": loss,
             "seed": seed} for number, (lr, loss) in enumerate(losses.items(), first)]


LR_SEARCH = {"optim.lr": {"key": "optim.lr", "low": 1e-4, "high": 1e-1, "log": True, "integer": False, "choices": None}}


def test_the_tuned_rate_is_the_lowest_point_of_the_parabola_through_the_best_and_its_neighbours():
    """Losses on a parabola in log lr, lowest at 2.5e-3, on a grid of factors of 2: the best trial is 3.2e-3, the
    parabola through it and its neighbours finds 2.5e-3, within their bracket. Repeats over another seed, 0.01
    apart, measure the noise: the interval is where the lowest point lies under it, 2.5e-3 inside."""
    grid = [1e-4 * 2 ** k for k in range(10)]
    curve = {lr: 2 + 0.05 * math.log(lr / 2.5e-3) ** 2 for lr in grid}
    choice = choose({"model": "gpt", "search": LR_SEARCH, "trials": trials_on(curve)})
    assert choice.values == {"optim.lr": 0.0025} and choice.fit.interval == (0.0016, 0.0064)
    assert choice.fit.noise is None and "optim.lr=0.0032, and at its neighbours (3 trials)" in choice.how
    assert tuned_entry(choice) == {"optim.lr": {"value": 0.0025, "interval": [0.0016, 0.0064],
                                                "neighbours": [0.0016, 0.0064]}}
    near = {lr: curve[lr] + 0.01 for lr in grid[4:7]}
    repeated = choose({"model": "gpt", "search": LR_SEARCH, "trials": trials_on(curve) + trials_on(near, 1338, 10)})
    low, high = repeated.fit.interval
    assert repeated.fit.noise == pytest.approx(0.01 / math.sqrt(2)) and 1.6e-3 < low < 2.5e-3 < high < 6.4e-3
    assert 2.4e-3 <= repeated.values["optim.lr"] <= 2.6e-3 and "(6 trials)" in repeated.how
    # A steep rise above the best, gentle below (as a rate near instability): the point leans away from the cliff.
    cliff = {1.27e-3: 2.4157, 2.25e-3: 2.3880, 4e-3: 2.3698, 7.11e-3: 2.6617}
    leaning = choose({"model": "gpt_rope", "search": LR_SEARCH, "trials": trials_on(cliff)})
    assert 2.25e-3 < leaning.values["optim.lr"] < 4e-3 and leaning.fit.interval == (0.00225, 0.00711)


def test_without_a_curve_to_fit_the_best_trials_value_is_taken():
    """The best at the end of the finished trials (not bracketed), or two searched keys: the best trial's values,
    and tune.md says why."""
    not_bracketed = choose({"model": "gpt", "search": LR_SEARCH,
                            "trials": trials_on({1e-3: 2.0, 2e-3: 2.1, 4e-3: 2.3})})
    two_keys = {**LR_SEARCH, "model.dropout": {**LR_SEARCH["optim.lr"], "key": "model.dropout", "low": 0.0,
                                                "high": 0.2, "log": False}}
    trials = [{**trial, "params": {**trial["params"], "model.dropout": 0.1}}
              for trial in trials_on({1e-3: 2.5, 2e-3: 2.0, 4e-3: 2.5})]
    both = choose({"model": "gpt", "search": two_keys, "trials": trials})
    assert (not_bracketed.values, not_bracketed.fit) == ({"optim.lr": 1e-3}, None)
    assert both.values == {"optim.lr": 2e-3, "model.dropout": 0.1} and both.fit is None
    assert tuned_entry(both) == {"optim.lr": 2e-3, "model.dropout": 0.1}
    assert [c.how.split(": ")[1] for c in (not_bracketed, both)] == [
        "no finished trial on one side of it to fit a curve through", "a fit takes one searched range of numbers"]


def test_the_best_value_and_its_neighbours_are_repeated_over_seeds_which_the_final_comparison_avoids(tmp_path):
    """tune.repeats=1: the best of three rates and its neighbours each train again with seed 1338, never pruned;
    the same command later runs nothing more. The final comparison's seeds skip both trial seeds."""
    folder = tmp_path / "tune"
    cfg = compose_config("tune", *offline(tmp_path), *TINY_RUN, "model=bigram", "optim.min_lr=0",
                         f"paths.output_dir={folder}")
    folder.mkdir()
    queued = optuna.create_study(study_name="bigram", storage=f"sqlite:///{folder / 'study.db'}")
    for lr in (10.0, 1e-2, 3e-1):
        queued.enqueue_trial({"optim.lr": lr})
    # The repeat of 10.0, worse than the median at its checks, would be pruned if it were checked.
    tune = settings(3, {"optim": {"lr": [1e-3, 1e3]}}, prune_after=2, repeats=1)
    tune_model(cfg, tune, "bigram", folder)
    study = tune_model(cfg, tune, "bigram", folder)
    records = json.loads((folder / "trials.json").read_text())
    assert [(t["params"]["optim.lr"], t["seed"], t["state"], t["checks"]) for t in records["trials"]] == [
        *[(lr, 1337, "COMPLETE", 3) for lr in (10.0, 1e-2, 3e-1)],
        *[(lr, 1338, "COMPLETE", 0) for lr in (1e-2, 3e-1, 10.0)]]
    assert len({trial.value for trial in study.trials}) == 6
    choice = choose(records)
    assert choice.fit.noise > 0 and 1e-2 <= choice.fit.interval[0] < choice.values["optim.lr"] < choice.fit.interval[1]
    assert final_seeds({1337, 1338}, 3) == [1, 2, 3] and final_seeds({0, 1, 2}, 3) == [3, 4, 5]


@pytest.mark.parametrize("entry, at, value", [
    ("0.02", "chosen", 0.02), ("{value: 0.02, interval: [0.01, 0.04]}", "chosen", 0.02),
    *[("{value: 0.02, interval: [0.015, 0.03], neighbours: [0.01, 0.04]}", at, value)
      for at, value in (("chosen", 0.02), ("lower", 0.01), ("upper", 0.04))]])
def test_a_run_takes_its_models_tuned_value_from_tuned_yaml_old_or_with_its_interval_or_a_neighbour(tmp_path, entry, at,
                                                                                                     value):
    (tmp_path / "tuned.yaml").write_text(f"bigram:\n  optim.lr: {entry}\n")
    cfg = compose_config("train", "model=bigram", f"tuned={tmp_path / 'tuned.yaml'}", f"tuned_at={at}",
                         *offline(tmp_path), f"paths.output_dir={tmp_path / 'run'}")
    settled = settle(cfg, Command("bigram"))
    assert settled.tuned == {"optim.lr": value} and settled.config.optim.lr == value


def test_tune_then_the_final_comparison_at_the_tuned_values_four_jobs_at_once(tmp_path, monkeypatch, capsys):
    """python -m lmzoo.tune (in this process), then the command it printed, as typed, with hydra/launcher=parallel:
    2 models x 2 fresh seeds, 4 jobs at once."""
    tune_dir = tmp_path / "tune"
    monkeypatch.chdir(tmp_path)
    tune_main(monkeypatch, "model=bigram,mlp", "tune.trials=1", "tune.final_seeds=2", *TINY_RUN, *offline(tmp_path),
              f"hydra.sweep.dir={tune_dir}")
    best = yaml.safe_load((tune_dir / "tuned.yaml").read_text())
    assert set(best) == {"bigram", "mlp"} and all(1e-4 <= values["optim.lr"] <= 3e-2 for values in best.values())
    assert sorted(job.name for job in tune_dir.glob("model-*")) == ["model-bigram", "model-mlp"]
    assert all((job / "loss_vs_settings.png").is_file() for job in tune_dir.glob("model-*"))
    command = next(line for line in capsys.readouterr().out.splitlines()[::-1] if line.startswith("final comparison: "))
    words = shlex.split(command.removeprefix("final comparison: "))
    assert words[:4] == ["python", "-m", "lmzoo.train", "-m"] and "seed=1,2" in words
    # The tune's folder is no sweep of runs: compare names its report.
    monkeypatch.setattr(sys, "argv", ["compare", str(tune_dir)])
    with pytest.raises(SystemExit) as stopped:
        importlib.import_module("lmzoo.compare").main()
    assert stopped.value.code == 2 and (f"error: {tune_dir} is a tune's folder (python -m lmzoo.tune), not a sweep's: "
                                        f"its report is {tune_dir / 'tune.md'}") in capsys.readouterr().err
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
    # The bracket: the leaders, beside their tuned rates, at the comparison's budgets and tuned values.
    bracket = compose_config("train", "experiment=reference_bracket", return_hydra_config=True)
    assert set(bracket.hydra.sweeper.params.model.split(",")) < set(final.hydra.sweeper.params.model.split(","))
    assert (bracket.hydra.sweeper.params.tuned_at, bracket.hydra.sweeper.params.seed) == ("lower,upper", "1")
    assert bracket.hydra.sweeper.params["budget.flops"] == "1.5e12,1.5e13" and bracket.tuned == final.tuned
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
