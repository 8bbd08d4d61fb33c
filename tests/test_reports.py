"""Comparisons a researcher can trust, on synthetic run folders (summary.json, provenance.json, TensorBoard
events) written here rather than trained: Welch's t-test, runs pooled by config, curves against tokens,
FLOPs and time, and the IsoFLOP scaling fit."""

import json
import math
import statistics

import pytest
from helpers import markdown_tables

from lmzoo.cli.compare import main as compare_main
from lmzoo.cli.plot import main as plot_main
from lmzoo.cli.scaling import main as scaling_main
from lmzoo.reports.compare import compare
from lmzoo.reports.plot import load_runs, plot, plot_settings
from lmzoo.reports.report import write_report
from lmzoo.reports.scaling import fit_sweep
from lmzoo.training.choice import STUDY
from lmzoo.reports.stats import holm, regularized_incomplete_beta, welch_t_test

BATCH, BLOCK = 4, 8  # tokens per step: 32


def write_run(folder, model="gpt", seed=1, summary=None, config=None, curve=None, bpb=None):
    """A run folder as lmzoo leaves it: its config (with the paths that name the folder), its summary and, given
    `curve` ({step: val/loss}), its TensorBoard events."""
    folder.mkdir(parents=True)
    resolved = {"seed": seed, "block_size": BLOCK, "ckpt_path": None, "resume": None,
                "paths": {"data_dir": "data", "output_dir": str(folder)},
                "data": {"batch_size": BATCH, "seed": seed}, "model": {"_target_": model, "n_layer": 2},
                "optim": {"lr": 1e-3}, "logger": {"save_dir": str(folder)},
                "callbacks": {"model_checkpoint": {"dirpath": f"{folder}/checkpoints"}}}
    for key, value in (config or {}).items():
        section, _, name = key.rpartition(".")
        (resolved.setdefault(section, {}) if section else resolved)[name] = value
    (folder / "provenance.json").write_text(json.dumps({"version": "0.3.0", "git_commit": None, "config": resolved}))
    record = {"run": folder.name, "model": model, "parameters": 1000, "active_parameters": 1000, "steps": 30,
              "status": "done", "seed": seed, **(summary or {})}
    if curve:
        from torch.utils.tensorboard import SummaryWriter

        with SummaryWriter(folder / "tensorboard") as writer:
            for step, value in curve.items():
                writer.add_scalar("val/loss", value, step, walltime=1000.0 + step / 10)
                if bpb:
                    writer.add_scalar("val/bpb", value * bpb, step, walltime=1000.0 + step / 10)
        record.setdefault("best_val_loss", min(curve.values()))
    (folder / "summary.json").write_text(json.dumps(record))
    return folder


def test_welch_t_test_gives_the_published_values():
    # R's t.test (Welch by default) on these samples prints t = -1.8325, df = 17.9, p-value = 0.08356.
    test = welch_t_test([11, 9, 10, 11, 10, 12, 9, 11, 12, 9], [11, 13, 10, 13, 12, 9, 11, 12, 12, 11])
    assert (round(test.t, 4), round(test.df, 1), round(test.p, 5)) == (-1.8325, 17.9, 0.08356)
    # Student's t table: the two-sided 5% and 1% points; with 1 degree of freedom, the Cauchy distribution.
    for df, t, p in [(10, 2.228, 0.05), (30, 2.042, 0.05), (5, 4.032, 0.01), (2, 9.925, 0.01)]:
        assert regularized_incomplete_beta(df / (df + t * t), df / 2, 0.5) == pytest.approx(p, abs=1e-4)
    assert regularized_incomplete_beta(1 / (1 + 3.0**2), 0.5, 0.5) == pytest.approx(1 - 2 / math.pi * math.atan(3.0))
    with pytest.raises(ValueError):
        welch_t_test([1.0], [1.0, 2.0])


def test_runs_are_pooled_by_config_ranked_and_tested_against_the_best(tmp_path):
    rope = [1.50, 1.52, 1.51]
    gpt = [1.60, 1.63, 1.61]
    close = [1.51, 1.53, 1.49]
    for index, (model, seed, loss, config) in enumerate(
            [("gpt_rope", s, v, {}) for s, v in zip((1, 2, 3), rope)]
            + [("gpt", s, v, {}) for s, v in zip((1, 2, 3), gpt)]
            + [("gpt", s, v, {"optim.lr": 3e-3}) for s, v in zip((1, 2, 3), close)]
            + [("mlp", 1, 2.0, {})]):
        summary = {"best_val_loss": loss, "best_val_bpb": loss / math.log(2), "flops": 1.5e12, "mfu": 0.0123,
                   "tokens_per_sec": 1000.0 + index, "wall_time_s": 10.0 + index}
        # A resumed seed names its checkpoint: still the same setting.
        write_run(tmp_path / f"{index}_{model}", model, seed, summary,
                  {**config, "ckpt_path": f"{tmp_path}/x.ckpt" if index == 1 else None})
    write_run(tmp_path / "10_failed", "gpt_rope", 4, {"status": "failed: ValueError: boom"})
    ranked, runs = markdown_tables(compare(tmp_path))
    assert [row["model"] for row in ranked] == ["gpt_rope", "gpt (optim.lr=0.003)", "gpt (optim.lr=0.001)", "mlp"]
    best = ranked[0]
    assert best["n"] == "3 of 4" and best["vs best"] == "best"
    assert best["best val/loss"] == f"{statistics.fmean(rope):.4f} ± {statistics.stdev(rope):.4f}"
    bpb = [v / math.log(2) for v in rope]
    assert best["best val/bpb"] == f"{statistics.fmean(bpb):.4f} ± {statistics.stdev(bpb):.4f}"
    assert (best["FLOPs"], best["MFU"], best["wall time"], best["tokens/s"]) == ("1.50e+12", "1.23%", "11.0 s", "1,001")
    # Ranked by bits per byte: the test is of bpb, whose p equals that of the losses (bpb is loss / ln 2).
    p_gpt = welch_t_test([v / math.log(2) for v in gpt], bpb).p
    p_close = welch_t_test([v / math.log(2) for v in close], bpb).p
    # Two settings tested against the best: Holm doubles the smaller p, and keeps the larger at least as large.
    holm_close, holm_gpt = holm([p_close, p_gpt])
    assert holm_gpt == pytest.approx(2 * p_gpt) and holm_gpt < 0.05 < holm_close
    assert ranked[2]["vs best"] == f"p = {holm_gpt:.2g} (Holm): significant"
    assert ranked[1]["vs best"] == f"p = {holm_close:.2g} (Holm): not significant"
    assert "Holm-corrected for the 2 settings tested against rank 1" in compare(tmp_path)
    assert ranked[3]["vs best"] == "n = 1: no significance can be claimed" and ranked[3]["best val/loss"] == "2.0000"
    assert [(row["model"], row["seed"]) for row in runs][:4] == [("gpt_rope", "1"), ("gpt_rope", "2"),
                                                                ("gpt_rope", "3"), ("gpt (optim.lr=0.001)", "1")]
    assert runs[-1]["status"] == "failed: ValueError: boom" and runs[-1]["best val/loss"] == "-"


def test_holm_matches_rs_p_adjust():
    # R: p.adjust(c(0.01, 0.04, 0.03, 0.5), "holm") gives 0.04 0.09 0.09 0.50.
    assert holm([0.01, 0.04, 0.03, 0.5]) == pytest.approx([0.04, 0.09, 0.09, 0.5])


def test_the_table_says_which_seeds_it_averaged_over_and_each_models_tuned_values(tmp_path):
    for index, (model, lr, losses) in enumerate([("gpt", 0.003, (1.5, 1.52)), ("mlp", 0.01, (1.8, 1.83))]):
        for seed, loss in zip((11, 12), losses):
            write_run(tmp_path / f"{index}{seed}_{model}", model, seed, {"best_val_loss": loss, "tuned": {"optim.lr": lr}},
                      {"data.seed": 7, "optim.lr": lr})
    text = compare(tmp_path)
    assert "Seeds vary the initialization only (seed); the order of the training data (data.seed) is fixed." in text
    ranked, runs = markdown_tables(text)
    assert [(row["model"], row["tuned"]) for row in ranked] == [("gpt", "optim.lr=0.003"), ("mlp", "optim.lr=0.01")]
    assert {(row["seed"], row["data seed"]) for row in runs} == {("11", "7"), ("12", "7")}


def test_runs_of_one_text_typed_as_a_relative_and_an_absolute_path_are_one_setting(tmp_path):
    text = tmp_path / "shared" / "a.txt"
    for seed, path in [(1, str(text)), (2, "../shared/a.txt"), (3, "shared/a.txt")]:
        run = write_run(tmp_path / f"{seed}_gpt", "gpt", seed, {"best_val_loss": 1.5 + seed / 100}, {"data.path": path})
        (run / ".hydra").mkdir()
        started_in = tmp_path / "work" if seed == 2 else tmp_path
        (run / ".hydra" / "hydra.yaml").write_text(json.dumps({"hydra": {"runtime": {"cwd": str(started_in)}}}))
    write_run(tmp_path / "4_gpt", "gpt", 4, {"best_val_loss": 1.6}, {"data.path": str(tmp_path / "other.txt")})
    ranked, _ = markdown_tables(compare(tmp_path))
    assert [(row["model"], row["n"]) for row in ranked] == [(f"gpt (data.path={text})", "3"),
                                                           (f"gpt (data.path={tmp_path / 'other.txt'})", "1")]
    assert "trained on different text" in compare(tmp_path)


def test_a_lone_best_setting_claims_no_significance(tmp_path):
    write_run(tmp_path / "0_a", "gpt", 1, {"best_val_loss": 1.0})
    for seed in (1, 2):
        write_run(tmp_path / f"{seed}_b", "mlp", seed, {"best_val_loss": 1.5 + seed / 100})
    ranked, _ = markdown_tables(compare(tmp_path))
    assert [r["vs best"] for r in ranked] == ["best", "n = 1: no significance can be claimed"]
    assert "Ranked by mean best val/loss" in compare(tmp_path)


@pytest.fixture
def curves(tmp_path):
    """Two seeds of gpt (FLOPs per token known), one of mlp (a run of an older release: none)."""
    sweep = tmp_path / "sweep"
    # Lightning logs the validation after step n at step n - 1.
    write_run(sweep / "0_gpt", "gpt", 1, {"flops_per_token": 600}, curve={9: 3.0, 19: 2.0, 29: 1.5}, bpb=2)
    write_run(sweep / "1_gpt", "gpt", 2, {"flops_per_token": 600}, curve={9: 3.2, 19: 2.4, 29: 1.7}, bpb=2)
    write_run(sweep / "2_mlp", "mlp", 1, curve={9: 3.5, 19: 3.0})
    return sweep


def drawn(figure):
    """{gid: (x, y)} of the lines, and {gid: (lower, upper)} of the bands, of the figure's axis."""
    axis = figure.axes[0]
    lines = {line.get_gid(): (list(line.get_xdata()), list(line.get_ydata())) for line in axis.get_lines()}
    bands = {}
    for band in axis.collections:
        path = band.get_paths()[0].vertices
        bands[band.get_gid()] = (sorted({round(y, 6) for y in path[:, 1]}))
    return lines, bands


def test_curves_pool_seeds_into_a_mean_and_a_band(curves, tmp_path):
    runs = load_runs([curves])
    figure, left_out = plot_settings(runs, "tokens")
    lines, bands = drawn(figure)
    assert left_out == []
    assert lines["gpt"][0] == [320, 640, 960] and lines["gpt"][1] == pytest.approx([3.1, 2.2, 1.6])
    assert lines["mlp"] == ([320, 640], [3.5, 3.0])
    assert bands["gpt:band"] == pytest.approx([1.5, 1.7, 2.0, 2.4, 3.0, 3.2])
    assert "mlp:band" not in bands
    # FLOPs: tokens x flops_per_token; mlp does not record it and is left out, by name.
    figure, left_out = plot_settings(runs, "flops", "bpb")
    lines, _ = drawn(figure)
    assert lines["gpt"][0] == [320 * 600, 640 * 600, 960 * 600] and lines["gpt"][1] == pytest.approx([6.2, 4.4, 3.2])
    assert "mlp" not in lines and left_out == []  # mlp logged no val/bpb: not a run of this figure
    figure, left_out = plot_settings(runs, "flops")
    assert left_out == ["2_mlp"] and "mlp" not in drawn(figure)[0]
    # Time: seconds since each run's first event (at 1000 + step / 10 seconds).
    lines, _ = drawn(plot_settings(runs, "time")[0])
    assert lines["gpt"][0] == pytest.approx([0, 1, 2]) and lines["gpt"][1] == pytest.approx([3.1, 2.2, 1.6])
    plot_main([str(curves), "--x", "flops", "--out", str(tmp_path / "flops.png")])
    assert (tmp_path / "flops.png").stat().st_size > 10_000


def test_flops_spanning_more_than_two_decades_go_on_a_log_axis(curves):
    """A bigram at a transformer's FLOP budget spends a thousandth of it: a linear axis would hide its curve."""
    assert plot_settings(load_runs([curves]), "flops")[0].axes[0].get_xscale() == "linear"
    write_run(curves / "3_bigram", "bigram", 1, {"flops_per_token": 1}, curve={9: 4.0, 19: 3.0})
    assert plot_settings(load_runs([curves]), "flops")[0].axes[0].get_xscale() == "log"


def test_a_zoo_larger_than_the_colour_cycle_draws_no_two_curves_alike(tmp_path):
    models = [f"model{index}" for index in range(14)]
    for index, model in enumerate(models):
        write_run(tmp_path / f"{index}_{model}", model, 1, {"flops_per_token": 600}, curve={9: 3.0 - index / 100})
    runs = load_runs([tmp_path])
    axis = plot_settings(runs, "flops")[0].axes[0]
    looks = {(line.get_color(), line.get_linestyle(), line.get_marker()) for line in axis.get_lines()}
    assert len(axis.get_lines()) == 14 and len(looks) == 14
    # The overview, without --x: each run's val curve against steps.
    axis = plot(runs).axes[0]
    looks = {(line.get_color(), line.get_linestyle(), line.get_marker()) for line in axis.get_lines()}
    assert len(axis.get_lines()) == 14 and len(looks) == 14


def write_scaling_sweep(sweep, exponent=0.5, budgets=(1e14, 3e14, 1e15), sizes=(1e5, 2e5, 5e5, 1e6, 2e6, 5e6),
                        seeds=(1, 2)):
    """Runs whose best loss follows a known law: N*(C) = k C^exponent, L = L*(C) + 0.05 (ln N - ln N*)², with a
    little deterministic noise per seed."""
    k = 3e5 / 1e14**exponent
    index = 0
    for budget in budgets:
        optimum = k * budget**exponent
        for size in sizes:
            for seed in seeds:
                noise = 0.002 * math.sin(index * 12.9898)
                value = 3.0 - 0.1 * math.log10(budget) + 0.05 * (math.log(size) - math.log(optimum)) ** 2 + noise
                write_run(sweep / f"{index}_run", "gpt_rope", seed, {"parameters": int(size), "best_val_loss": value},
                          {"budget": {"flops": budget, "tokens": None, "minutes": None}, "model.target_params": size})
                index += 1


def test_scaling_recovers_the_exponent_of_a_known_law(tmp_path, capsys):
    write_scaling_sweep(tmp_path / "sweep", exponent=0.5)
    (result,) = fit_sweep(tmp_path / "sweep")
    assert result.model == "gpt_rope" and len(result.isoflops) == 3
    assert result.law[0] == pytest.approx(0.5, rel=0.05)
    for isoflop in result.isoflops:
        assert isoflop.optimum == pytest.approx(3e5 * (isoflop.budget / 1e14) ** 0.5, rel=0.05)
    write_scaling_sweep(tmp_path / "steep", exponent=0.7)
    assert fit_sweep(tmp_path / "steep")[0].law[0] == pytest.approx(0.7, rel=0.05)
    scaling_main([str(tmp_path / "sweep")])
    out = capsys.readouterr().out
    assert f"gpt_rope: N*(C) = {math.exp(result.law[1]):.3g} · C^{result.law[0]:.3f} over 3 budgets" in out
    budgets, points = markdown_tables(out)
    assert [row["budget (FLOPs)"] for row in budgets] == ["1.00e+14", "3.00e+14", "1.00e+15"]
    assert len(points) == 36 and all(abs(float(row["residual"])) < 0.01 for row in points)
    assert (tmp_path / "sweep" / "scaling.png").stat().st_size > 10_000


def test_the_report_gives_the_command_as_typed_and_draws_against_flops(curves):
    overrides = {"hydra": ["hydra.sweep.dir=sweep", "hydra.mode=MULTIRUN"],
                 "task": ["model=gpt", "seed=1,2", "optim.decay_steps=${trainer.max_steps}", "prompt=Hello, world"]}
    hydra = {"overrides": overrides, "job": {"config_name": "train"},
             "runtime": {"cwd": "/home/me/lmzoo", "config_sources": [{"path": "lmzoo.conf", "provider": "main"}]}}
    (curves / "multirun.yaml").write_text(json.dumps({"hydra": hydra}))  # JSON is YAML
    write_report(curves)
    report = (curves / "report.md").read_text()
    command = ("python -m lmzoo.train -m hydra.sweep.dir=sweep model=gpt seed=1,2 "
               "'optim.decay_steps=${trainer.max_steps}' 'prompt=Hello, world'")
    assert f"In `/home/me/lmzoo`:\n\n```bash\n{command}\n```" in report
    assert (curves / "comparison.md").read_text().strip() in report
    assert "![val/loss against training FLOPs](val_loss.png)" in report
    assert "Left out, for lack of their training FLOPs: 2_mlp." in report
    assert (curves / "val_loss.png").stat().st_size > 10_000


def test_sweeps_at_two_budgets_compare_as_one_study_labelled_by_their_budget(tmp_path, capsys):
    from lmzoo.cli.compare import main as compare_main

    # One study run as two sweeps (a budget each): the budget derives the steps, which the labels need not repeat.
    for budget, steps, losses in [(1e12, 30, (2.0, 2.1)), (1.5e13, 450, (1.5, 1.55))]:
        for index, (model, seed) in enumerate([("gpt", 1), ("gpt", 2), ("mlp", 1)]):
            write_run(tmp_path / f"sweep_{budget:g}" / f"{index}_{model}_seed-{seed}", model, seed,
                      {"best_val_loss": losses[seed - 1] + (model == "mlp"), "flops_per_token": 600},
                      {"budget.flops": budget, "trainer.max_steps": steps, "optim.decay_steps": steps},
                      curve={9: 3.0, 29: losses[seed - 1] + (model == "mlp")})
    small, large, out = tmp_path / "sweep_1e+12", tmp_path / "sweep_1.5e+13", tmp_path / "study"
    compare_main([str(small), str(large), "--out", str(out)])
    ranked, runs = markdown_tables(capsys.readouterr().out)
    assert [(row["model"], row["n"]) for row in ranked] == [
        ("gpt (budget.flops=1.5e+13)", "2"), ("gpt (budget.flops=1e+12)", "2"),
        ("mlp (budget.flops=1.5e+13)", "1"), ("mlp (budget.flops=1e+12)", "1")]
    # Job folders of two sweeps share names: each run is named by its sweep too.
    assert runs[0]["run"] == "sweep_1e+12/0_gpt_seed-1" and runs[3]["run"] == "sweep_1.5e+13/0_gpt_seed-1"
    report = (out / "report.md").read_text()
    assert f"python -m lmzoo.compare {small} {large} --out {out}" in report
    assert f"`{small}`: Not recorded" in report and (out / "comparison.md").read_text().strip() in report
    assert (out / "val_loss.png").stat().st_size > 10_000
    # A sweep folder's own tables describe its runs alone: without --out, the pooled table is only printed.
    compare_main([str(small), str(large)])
    assert markdown_tables(capsys.readouterr().out)[0] == ranked
    assert not (small / "comparison.md").exists() and not (large / "comparison.md").exists()
    # Steps typed, with no budget that derives them, still tell settings apart.
    for steps in (30, 60):
        write_run(tmp_path / "steps" / f"{steps}_gpt", "gpt", 1, {"best_val_loss": 3 - steps / 100},
                  {"trainer.max_steps": steps})
    assert [row["model"] for row in markdown_tables(compare(tmp_path / "steps"))[0]] == [
        "gpt (trainer.max_steps=60)", "gpt (trainer.max_steps=30)"]



@pytest.fixture
def recall_sweep(tmp_path):
    """MQAR at two difficulties: gpt_rope and mamba2 at two widths (state sizes) and two learning rates, two seeds."""
    index = 0
    for pairs in (4, 8):
        for model, state_per_width in (("gpt_rope", 1000), ("mamba2", 10)):
            for width in (32, 64):
                for lr in (1e-3, 1e-2):
                    for seed in (1, 2):
                        accuracy = min(1.0, (0.5 if model == "mamba2" else 0.9) + width / 1000 + lr - pairs / 100
                                       + seed / 1000)
                        config = {"data.name": "mqar", "data.num_kv_pairs": pairs, "block_size": 16 * pairs,
                                  "model.n_embd": width, "optim.lr": lr, "data.batch_size": 64 // pairs}
                        write_run(tmp_path / f"{index}_{model}", model, seed,
                                  {"best_val_loss": 1 - accuracy, "best_val_accuracy": accuracy,
                                   "state_bytes": state_per_width * width * pairs}, config)
                        index += 1
    return tmp_path


def test_a_tasks_runs_are_ranked_by_accuracy_in_a_table_per_task(recall_sweep):
    text = compare(recall_sweep)
    assert "Ranked by mean best val/accuracy over seeds, highest first" in text and "A table per task." in text
    # The tasks differ in their pairs and length; the batch size says how they trained, not what.
    assert "mqar (block_size=64, data.num_kv_pairs=4):" in text and "mqar (block_size=128, data.num_kv_pairs=8):" in text
    easy, hard, across, runs = markdown_tables(text)
    assert len(easy) == len(hard) == 8 and len(runs) == 32
    # Each model's best setting per task, chosen by validation, ranked among the models' side by side.
    assert across == [{"model": "gpt_rope", "mqar (block_size=64, data.num_kv_pairs=4) best val/accuracy": "1 (0.9355)",
                       "mqar (block_size=128, data.num_kv_pairs=8) best val/accuracy": "1 (0.8955)"},
                      {"model": "mamba2", "mqar (block_size=64, data.num_kv_pairs=4) best val/accuracy": "2 (0.5355)",
                       "mqar (block_size=128, data.num_kv_pairs=8) best val/accuracy": "2 (0.4955)"}]
    assert easy[0]["model"] == "gpt_rope (model.n_embd=64, optim.lr=0.01)" and easy[0]["best val/accuracy"] == \
        "0.9355 ± 0.0007"
    assert easy[-1]["model"] == "mamba2 (model.n_embd=32, optim.lr=0.001)" and easy[0]["state"] == "250.0 KiB"
    assert [row["best val/accuracy"] for row in easy] == sorted((row["best val/accuracy"] for row in easy), reverse=True)
    assert "best val/bpb" not in easy[0] and runs[0]["state"] == "125.0 KiB"


def test_accuracy_against_state_size_draws_a_line_per_architecture_a_panel_per_task(recall_sweep, tmp_path):
    from lmzoo.reports.plot import plot_state
    from lmzoo.reports.compare import read_sweep

    figure = plot_state(read_sweep(recall_sweep))
    assert [axis.get_title() for axis in figure.axes] == ["mqar (block_size=64, data.num_kv_pairs=4)",
                                                          "mqar (block_size=128, data.num_kv_pairs=8)"]
    lines = {line.get_gid(): (list(line.get_xdata()), list(line.get_ydata())) for line in figure.axes[0].get_lines()}
    # A point per width, its state size; each the best learning rate's mean over seeds.
    assert lines["mqar (block_size=64, data.num_kv_pairs=4):mamba2"][0] == [32 * 10 * 4, 64 * 10 * 4]
    assert lines["mqar (block_size=64, data.num_kv_pairs=4):mamba2"][1] == pytest.approx([0.5035, 0.5355])
    assert figure.axes[0].get_xscale() == "log"
    write_report(recall_sweep)
    assert "![accuracy against decoding state](accuracy_state.png)" in (recall_sweep / "report.md").read_text()
    assert (recall_sweep / "accuracy_state.png").stat().st_size > 10_000
    plot_main([str(recall_sweep), "--x", "state", "--out", str(tmp_path / "state.png")])
    assert (tmp_path / "state.png").stat().st_size > 10_000


def test_a_one_task_state_figure_names_its_metric_once_and_its_titles_fit(recall_sweep):
    from lmzoo.reports.compare import read_sweep
    from lmzoo.reports.plot import plot_state

    # One difficulty, one panel: the narrowest figure, where a long title is cut at both edges.
    one_task = [run for run in read_sweep(recall_sweep) if run.config["data"]["num_kv_pairs"] == 4]
    figure = plot_state(one_task)
    figure.canvas.draw()
    # Runs without a test split show validation's metric, and say so.
    assert figure.axes[0].get_ylabel() == "best val/accuracy"
    canvas = figure.bbox
    for text in (*figure.texts, figure.axes[0].title):
        extent = text.get_window_extent()
        assert canvas.x0 <= extent.x0 and extent.x1 <= canvas.x1 and extent.y1 <= canvas.y1, text.get_text()


def test_a_state_point_is_the_test_accuracy_of_the_rate_validation_chose(tmp_path):
    from lmzoo.reports.compare import read_sweep
    from lmzoo.reports.plot import plot_state

    for lr, val, test in ((1e-3, 0.80, 0.90), (1e-2, 0.85, 0.70)):
        for seed in (1, 2):
            write_run(tmp_path / f"mamba2_{lr}_{seed}", "mamba2", seed,
                      {"best_val_loss": 1.0, "best_val_accuracy": val + seed / 100, "test_loss": 1.0,
                       "test_accuracy": test + seed / 100, "state_bytes": 4096},
                      {"data.name": "mqar", "model.n_embd": 32, "optim.lr": lr})
    figure = plot_state(read_sweep(tmp_path))
    (line,) = figure.axes[0].get_lines()
    # Validation prefers lr 1e-2; its test accuracy is drawn, not lr 1e-3's better test accuracy.
    assert list(line.get_xdata()) == [4096] and list(line.get_ydata()) == pytest.approx([0.715])
    assert figure.axes[0].get_ylabel() == "test/accuracy"
    assert "the setting best val/accuracy chose" in figure.texts[0].get_text()


def test_text_and_recall_rank_each_by_its_own_metric_and_side_by_side(recall_sweep, tmp_path_factory, capsys):
    text_sweep = tmp_path_factory.mktemp("text")
    for model, bpb in (("gpt_rope", 2.1), ("mamba2", 2.0)):
        for lr, worse in ((1e-3, 0.0), (1e-2, 0.05)):
            for seed in (1, 2):
                # Validation prefers lr 1e-3; the test split would prefer 1e-2 for mamba2: not a choice it makes.
                test = bpb + worse + seed / 100 - (0.2 if model == "mamba2" and lr == 1e-2 else 0)
                write_run(text_sweep / f"{model}_{lr}_{seed}", model, seed,
                          {"best_val_loss": 1.5, "best_val_bpb": bpb + worse + seed / 100, "test_bpb": test,
                           "test_loss": 1.5}, {"data.name": "shakespeare_char", "optim.lr": lr})
    compare_main([str(recall_sweep), str(text_sweep)])
    text = capsys.readouterr().out
    *tasks, across, runs = markdown_tables(text)
    # The text is ranked by bits per byte, lowest first; the tasks by accuracy, highest first; no run left unranked.
    assert "shakespeare_char (block_size=8), by test/bpb:" in text and "Not ranked" not in text
    assert ("mqar (block_size=64, data.num_kv_pairs=4), mqar (block_size=128, data.num_kv_pairs=8): Ranked by mean "
            "best val/accuracy over seeds, highest first") in text
    assert "shakespeare_char (block_size=8): Ranked by mean test/bpb" in text
    assert [row["model"] for row in tasks[-1]] == ["mamba2 (optim.lr=0.01)", "mamba2 (optim.lr=0.001)",
                                                   "gpt_rope (optim.lr=0.001)", "gpt_rope (optim.lr=0.01)"]
    # Side by side, each model at the setting validation chose (mamba2 at 1e-3), as a tune would have.
    text_column = "shakespeare_char (block_size=8) test/bpb"
    assert [(row["model"], row[text_column]) for row in across] == [("gpt_rope", "2 (2.1150)"),
                                                                     ("mamba2", "1 (2.0150)")]
    assert across[0]["mqar (block_size=64, data.num_kv_pairs=4) best val/accuracy"] == "1 (0.9355)"


def test_a_folder_of_runs_and_sweeps_compares_every_run_in_it(tmp_path):
    outputs = tmp_path / "outputs"
    write_run(outputs / "lone", "gpt", 1, {"best_val_loss": 2.0})
    for sweep, model in (("sweep_a", "mlp"), ("sweep_b", "bigram")):
        (outputs / sweep).mkdir(parents=True)
        (outputs / sweep / "multirun.yaml").write_text("hydra: {}\n")
        write_run(outputs / sweep / f"0_{model}", model, 1, {"best_val_loss": 3.0})
    ranked, runs = markdown_tables(compare(outputs))
    assert sorted(row["model"] for row in ranked) == ["bigram", "gpt", "mlp"]
    assert [row["run"] for row in runs] == ["outputs/lone", "sweep_a/0_mlp", "sweep_b/0_bigram"]
    # A tune's folder beside them holds trials, not runs to compare: its studies are passed over.
    write_run(outputs / "tunes" / "t" / "gpt_study" / "0_trial", "gpt", 1, {"best_val_loss": 1.0})
    (outputs / "tunes" / "t" / "gpt_study" / STUDY).write_bytes(b"")
    assert [row["run"] for row in markdown_tables(compare(outputs))[1]] == [
        "outputs/lone", "sweep_a/0_mlp", "sweep_b/0_bigram"]
