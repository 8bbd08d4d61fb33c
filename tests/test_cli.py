"""The command lines as a user types them, each in a subprocess, and the entry every command starts from."""

import gc
import importlib
import os
import subprocess
import sys
import tomllib
import types

import pytest
from helpers import REPO, SHAKESPEARE, TINY, compose_train, markdown_tables, run

import lmzoo.cli
from lmzoo.cli.hydra_command import mode_may_be_set
from lmzoo.training.run import train


def test_train_then_generate(tmp_path):
    trained = run("lmzoo.train", *TINY, f"data.path={SHAKESPEARE}", "hydra.run.dir=run", "sample_tokens=20", cwd=tmp_path)
    # Lightning's advert and torch's deprecation of Lightning's LeafSpec are noise on every run.
    assert "litlogger" not in trained.stderr + trained.stdout and "LeafSpec" not in trained.stderr
    assert (tmp_path / "data" / "shakespeare_char" / "char" / "train.bin").is_file()
    assert list((tmp_path / "run" / "tensorboard").glob("events.out.tfevents.*"))
    ckpt = tmp_path / "run" / "checkpoints" / "best.ckpt"
    out = run("lmzoo.generate", f"ckpt={ckpt}", "prompt=ROMEO:", "max_new_tokens=40", "num_samples=2",
              "temperature=0", cwd=tmp_path).stdout
    samples = out.strip("\n").split("\n---------------\n")
    assert len(samples) == 2 and samples[0] == samples[1]
    assert samples[0].startswith("ROMEO:") and len(samples[0]) == len("ROMEO:") + 40
    # A reader that stops reading (`| head`) ends it without a traceback, its output buffered or not.
    for unbuffered in ("", "1"):
        env = {**os.environ, "PYTHONUNBUFFERED": unbuffered}
        generating = subprocess.Popen([sys.executable, "-m", "lmzoo.generate", f"ckpt={ckpt}", "max_new_tokens=40"],
                                      cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        generating.stdout.close()
        assert generating.wait(timeout=120) == 1
        stderr = generating.stderr.read()
        assert "Traceback" not in stderr and "BrokenPipeError" not in stderr, stderr


def test_prepare_command(tmp_path):
    out = run("lmzoo.prepare", "data=shakespeare", f"data.path={SHAKESPEARE}", cwd=tmp_path).stdout
    assert "vocab 50,257 (uint16)" in out
    assert (tmp_path / "data" / "shakespeare" / "gpt2" / "meta.json").is_file()
    assert not (tmp_path / "outputs").exists()


def test_sweep_runs_each_job_in_its_own_folder_whose_path_generate_takes_unquoted(tmp_path):
    run("lmzoo.train", "-m", "model=gpt,gpt_rope", *TINY, f"data.path={SHAKESPEARE}", "trainer.max_steps=10",
        "+tags=[a,b]", "hydra.sweep.dir=sweep", cwd=tmp_path)
    jobs = sorted(p.name for p in (tmp_path / "sweep").iterdir() if p.is_dir())
    assert len(jobs) == 2 and jobs[0].startswith("0_+tags-a+b_") and "_model-gpt_" in jobs[0]
    assert not any(char in job for job in jobs for char in "=,[]'\"")
    for job in jobs:
        assert (tmp_path / "sweep" / job / "checkpoints" / "last.ckpt").is_file()
    # The path as the comparison table prints it, pasted into the next command as it is.
    row = markdown_tables((tmp_path / "sweep" / "comparison.md").read_text())[-1][0]
    pasted = f"ckpt=sweep/{row['run']}/checkpoints/best.ckpt"
    assert run("lmzoo.generate", pasted, "max_new_tokens=5", cwd=tmp_path).returncode == 0


def test_prompts_are_taken_as_typed(tmp_path):
    """Chinese, emoji, commas, '=' and quotes in a prompt, typed without quoting for Hydra (one argument each, as
    the shell passes `prompt="Hello, world"`); a GPT-2 BPE model, trained here in-process, takes any text."""
    best = train(compose_train(tmp_path, "data=shakespeare", "trainer.max_steps=2", "trainer.val_check_interval=2"))
    ckpt = f"ckpt={best['best_checkpoint']}"
    typed = "宝玉道 🙂 Hello, world: a=b 'it''s' \"quoted\" ${seed} \\n"
    out = run("lmzoo.generate", ckpt, f"prompt={typed}", "max_new_tokens=3", "temperature=0", cwd=tmp_path).stdout
    assert out.startswith(typed)
    several = run("lmzoo.generate", ckpt, "prompt=[宝玉道,'Hello, world']", "max_new_tokens=3", "temperature=0",
                  cwd=tmp_path).stdout.split("\n---------------\n")
    assert several[0].startswith("宝玉道") and several[1].startswith("Hello, world")


@pytest.mark.parametrize("args, message", [
    (["lmzoo.train", "data.path=missing.txt"], "error: data file 'missing.txt' does not exist; point data.path at a text file"),
    (["lmzoo.train", "data.path=none", "data.url=file:///nonexistent/input.txt"], "set data.path to a local copy"),
    (["lmzoo.train", "block_size=0"], "error: block_size must be positive, got 0"),
    (["lmzoo.train", "ckpt_path=nothing.ckpt"], "error: checkpoint 'nothing.ckpt' does not exist"),
    (["lmzoo.generate", "ckpt=nothing.ckpt"], "error: checkpoint 'nothing.ckpt' does not exist"),
    (["lmzoo.train", "model=nosuchmodel"], "error: model=nosuchmodel is not an option; choose one of bigram,"),
    (["lmzoo.train", "data=nosuchdata"], "error: data=nosuchdata is not an option; choose one of hongloumeng,"),
    (["lmzoo.train", "model.n_layr=2"], "error: model has no key n_layr (did you mean n_layer?)"),
    (["lmzoo.generate", "ckpt=x.ckpt", "temperature=-1"], "error: temperature must be >= 0"),
])
def test_user_mistakes_get_one_clear_line(tmp_path, args, message):
    args = [a.replace("data.path=none", "data.path=null") for a in args]
    result = run(*args, cwd=tmp_path, check=False)
    assert result.returncode == 2
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and message in last, result.stderr
    assert "Traceback" not in result.stderr


def test_a_command_loads_with_the_collector_off_and_runs_with_it_on(monkeypatch):
    """Long training runs need the cyclic garbage collector: only the command's import goes without it."""
    seen = {}

    def import_module(name):
        seen["import"] = (name, gc.isenabled())
        return types.SimpleNamespace(main=lambda: seen.setdefault("main", gc.isenabled()))

    monkeypatch.setattr(lmzoo.cli.importlib, "import_module", import_module)
    frozen = gc.get_freeze_count()
    try:
        lmzoo.cli.run_command("train")
        assert gc.get_freeze_count() > frozen
    finally:
        gc.unfreeze()
    assert seen == {"import": ("lmzoo.cli.train", False), "main": True} and gc.isenabled()


def test_a_command_ending_without_teardown_writes_all_its_output_and_runs_the_exit_handlers(tmp_path):
    """python -m lmzoo.generate ends by exit_without_teardown: what it printed (buffered, as into a pipe) and what
    the exit handlers do still happen, and the exit status is 0."""
    script = ("import atexit, sys\nfrom lmzoo.cli import exit_without_teardown\n"
              "atexit.register(lambda: open('handled', 'w').write('yes'))\n"
              "sys.stdout.write('x' * 1000)\nprint('end', file=sys.stderr)\nexit_without_teardown()\n"
              "print('not reached')\n")
    buffered = {key: value for key, value in os.environ.items() if key != "PYTHONUNBUFFERED"}
    result = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, env=buffered)
    assert (result.returncode, result.stdout, result.stderr) == (0, "x" * 1000, "end\n")
    assert (tmp_path / "handled").read_text() == "yes"


@pytest.mark.parametrize(("args", "may_be_set"), [
    (["model=gpt", "hydra.run.dir=x"], False), (["-m", "seed=1,2"], False), (["hydra.mode=MULTIRUN"], True),
    (["++hydra.mode=RUN"], True), (["-cn", "tune"], True), (["--config-name=tune"], True),
    (["--config-dir", "d"], True)])
def test_hydra_composes_once_to_read_the_mode_only_where_something_may_set_it(args, may_be_set):
    assert mode_may_be_set(args, mode_in_config=False) == may_be_set
    assert mode_may_be_set(args, mode_in_config=True)


def test_every_installed_script_names_a_command():
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    for script, target in scripts.items():
        module, _, function = target.partition(":")
        assert script == f"lmzoo-{module.removeprefix('lmzoo.')}"
        assert callable(getattr(importlib.import_module(module), function))
