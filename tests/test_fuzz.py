"""A fuzzer of the command lines: Hypothesis draws overrides of each command's own config keys and groups with
hostile values (wrong types, NaN and inf, zero, negative and huge numbers, unknown and deleted keys,
interpolations, unicode), runs the command's main() in this process up to the end of its checks, and holds it to
the contract: it is accepted, or it exits with status 2 and exactly one `error: ...` line, no traceback, and
every file of the folder it was pointed at as it was.

A command is accepted when it reaches the step after its checks, which the test stops there (Checked): train
and tune preparing their data, evaluate preparing its data, generate its first sampled token. The default run
draws a few hundred command lines; `-m slow` thousands.
"""

import contextlib
import importlib
import logging
import os
import shutil
import sys
from pathlib import Path

import pytest
from helpers import SHAKESPEARE, TINY, compose_config
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_bad_input import protected

from lmzoo.training.run import train

# Examples per command: a few hundred in all by default, thousands with -m slow. Hydra composes a command's config
# twice, in about half a second on a 2-core VM: the commands on Hydra get fewer than compare.
DEFAULT, SLOW = 30, 800
COMPARE_DEFAULT = 150

HOSTILE = ["abc", "''", "null", "true", "0", "-1", "-0.5", "2.5", "1e30", "-1e30", "nan", "inf", "-inf",
           "100000000000", "18446744073709551616", "[]", "[1,2]", "[a,b]", "{a:1}", "${oops}", "${seed}",
           "${model}", "'${hydra:runtime.cwd}'", "宝玉道", "é", "\U0001F600", "'a b'", "'a,b'", "0x10", "1_000",
           "-0", "1e-400", "'\\n'"]


class Checked(BaseException):
    """Raised where a command goes on past its checks: its command line was accepted."""


def accepted(*args, **kwargs):
    raise Checked


def leaf_keys(config: dict, prefix: str = "") -> list[str]:
    keys = []
    for key, value in config.items():
        keys.extend(leaf_keys(value, f"{prefix}{key}.") if isinstance(value, dict) and value else [f"{prefix}{key}"])
    return keys


def config_keys(name: str, *overrides: str) -> list[str]:
    """The keys of command `name`'s composed config, less those that choose where it writes (paths)."""
    from omegaconf import OmegaConf

    config = OmegaConf.to_container(compose_config(name, *overrides), resolve=False)
    return sorted(key for key in leaf_keys(config) if not key.startswith("paths."))


def groups_of(*names: str) -> dict[str, list[str]]:
    """Each config group's options (conf/GROUP/*.yaml) and one that does not exist."""
    conf = Path(importlib.import_module("lmzoo.conf").__file__).parent
    return {name: [path.stem for path in sorted((conf / name).glob("*.yaml"))] + ["nosuch"] for name in names}


def overrides(keys: list[str], groups: dict[str, list[str]]):
    """One override: a key set to a hostile value (or to unicode text), deleted, or added; or a group's option."""
    value = st.one_of(st.sampled_from(HOSTILE), st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)),
                                                         max_size=6))
    key = st.sampled_from(keys)
    drawn = [
        st.builds(lambda k, v: f"{k}={v}", key, value),
        st.builds(lambda k: f"~{k}", key),
        st.builds(lambda k, v: f"++{k.rpartition('.')[0] or k}.nosuch={v}", key, value),
        st.builds(lambda k, v: f"+{k}.nosuch={v}", key, value),
    ]
    options = [f"{group}={option}" for group, names in groups.items() for option in names]
    return st.one_of(*drawn, *([st.sampled_from(options)] if options else []))


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A finished tiny run (its folder, checkpoint and data) that the commands are pointed at."""
    tmp = tmp_path_factory.mktemp("fuzz")
    train(compose_config("train", f"data.path={SHAKESPEARE}", f"paths.data_dir={tmp / 'data'}",
                         f"paths.output_dir={tmp / 'run'}", *TINY, "model.n_layer=1", "trainer.max_steps=4",
                         "trainer.val_check_interval=4"))
    (tmp / "run" / ".hydra").mkdir()
    (tmp / "run" / ".hydra" / "config.yaml").write_text(
        f"data:\n  name: shakespeare_char\n  path: {SHAKESPEARE}\n  root: {tmp / 'data'}\n  tokenizer: {{kind: char}}\n"
        "  _target_: lmzoo.data.DataConfig\n  block_size: 32\n")
    for sweep in ("sweep_a", "sweep_b"):
        shutil.copytree(tmp / "run", tmp / "runs" / sweep / "0_run")
    shutil.copytree(tmp / "run", tmp / "runs" / "lone")
    return tmp


def run_command(entry: str, argv: list[str], folder: Path, monkeypatch, capsys) -> None:
    """Run python -m lmzoo.ENTRY ARGV in this process and hold it to the contract (see the module's docstring)."""
    before = protected(folder)
    handlers, level = logging.root.handlers[:], logging.root.level
    capsys.readouterr()
    monkeypatch.setattr(sys, "argv", [entry, *argv])
    code = 0
    try:
        importlib.import_module(f"lmzoo.{entry}").main()
    except Checked:
        pass
    except SystemExit as stopped:
        code = stopped.code
    finally:
        logging.root.handlers[:], logging.root.level = handlers, level
    err = capsys.readouterr().err
    shown = f"python -m lmzoo.{entry} {' '.join(argv)}\n{err}"
    assert code in (0, 2), shown
    assert "Traceback" not in err and "Error executing job" not in err, shown
    if code == 2:
        assert len([line for line in err.splitlines() if line.startswith("error: ")]) == 1, shown
        assert protected(folder) == before, shown


@contextlib.contextmanager
def stopped_after_checks(monkeypatch, *targets: str):
    """The functions `targets` (module.function) raise Checked: the command has passed its checks when it calls
    them."""
    with monkeypatch.context() as patch:
        for target in targets:
            module, _, name = target.rpartition(".")
            patch.setattr(importlib.import_module(module), name, accepted)
        yield


def fuzz(budget: int):
    return settings(max_examples=budget, deadline=None, database=None, derandomize=budget != SLOW,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


def contract_tests(check, keys: list[str], groups: dict[str, list[str]]):
    """One command's fuzz test at the default budget and at the slow one (which also draws longer command lines):
    `check(world, drawn, monkeypatch, capsys)` runs the command's checks on the drawn overrides."""
    def command_lines(max_size: int):
        return st.lists(overrides(keys, groups), min_size=1, max_size=max_size)

    @fuzz(DEFAULT)
    @given(drawn=command_lines(3))
    def default(world, drawn, monkeypatch, capsys):
        check(world, drawn, monkeypatch, capsys)

    @pytest.mark.slow
    @fuzz(SLOW)
    @given(drawn=command_lines(4))
    def slow(world, drawn, monkeypatch, capsys):
        check(world, drawn, monkeypatch, capsys)

    return default, slow


TRAIN_KEYS = config_keys("train")
TRAIN_GROUPS = groups_of("model", "optim", "trainer", "data", "finetune", "tokenizer", "callbacks", "experiment")


def check_train(world, drawn, monkeypatch, capsys):
    argv = [f"data.path={SHAKESPEARE}", f"paths.data_dir={world / 'data'}", f"hydra.run.dir={world / 'run'}", *TINY,
            "model.n_layer=1", "resume=auto", *drawn]
    with stopped_after_checks(monkeypatch, "lmzoo.training.plan.prepared_data"):
        run_command("train", argv, world / "run", monkeypatch, capsys)


test_train_checks_hold_the_contract, test_train_checks_hold_the_contract_slow = contract_tests(
    check_train, TRAIN_KEYS, TRAIN_GROUPS)


TUNE_KEYS = [key for key in config_keys("tune") if key.startswith(("tune.", "budget.", "optim.", "trainer.", "model."))]


def check_tune(world, drawn, monkeypatch, capsys):
    argv = [f"data.path={SHAKESPEARE}", f"paths.data_dir={world / 'data'}", f"tune.folder={world / 'tune'}", *TINY,
            "model=bigram", *drawn]
    with stopped_after_checks(monkeypatch, "lmzoo.training.tune.prepared_data"):
        run_command("tune", argv, world / "run", monkeypatch, capsys)


test_tune_checks_hold_the_contract, test_tune_checks_hold_the_contract_slow = contract_tests(
    check_tune, TUNE_KEYS, groups_of("optim"))


GENERATE_KEYS = [key for key in config_keys("generate", "ckpt=x") if key != "out"]


def first_token(model, tokenizer, prompts, settings, generator=None):
    """The sampler's first step over the prompts, then Checked."""
    from lmzoo.inference.sampling import generate, start_ids

    next(generate(model, [start_ids(tokenizer, p) for p in prompts], settings, generator=generator), None)
    raise Checked


def check_generate(world, drawn, monkeypatch, capsys):
    argv = [f"ckpt={world / 'run' / 'checkpoints' / 'last.ckpt'}", *drawn]
    with monkeypatch.context() as patch:
        patch.setattr(importlib.import_module("lmzoo.cli.generate"), "complete", first_token)
        run_command("generate", argv, world / "run", monkeypatch, capsys)


test_generate_checks_hold_the_contract, test_generate_checks_hold_the_contract_slow = contract_tests(
    check_generate, GENERATE_KEYS, {})


EVALUATE_KEYS = [key for key in config_keys("evaluate", "ckpt=x", "data=text") if key != "ckpt"]


def check_evaluate(world, drawn, monkeypatch, capsys):
    argv = [f"ckpt={world / 'run' / 'checkpoints' / 'last.ckpt'}", f"paths.data_dir={world / 'data'}", *drawn]
    with stopped_after_checks(monkeypatch, "lmzoo.inference.evaluation.prepare"):
        run_command("evaluate", argv, world / "run", monkeypatch, capsys)


test_evaluate_checks_hold_the_contract, test_evaluate_checks_hold_the_contract_slow = contract_tests(
    check_evaluate, EVALUATE_KEYS, groups_of("data"))


def compare_arguments(world):
    """Folders and files compare may be pointed at, and its flags."""
    places = ["runs", "runs/sweep_a", "runs/lone", "run", "run/checkpoints/last.ckpt", "nothing", "data", ""]
    folder = st.sampled_from(places).map(lambda place: str(world / place))
    flag = st.one_of(st.sampled_from(["--out", "--bogus", "-h"]), st.builds(lambda f: f"--out={f}", folder))
    return st.lists(st.one_of(folder, flag, st.sampled_from(HOSTILE)), min_size=0, max_size=4)


def check_compare(world, argv, monkeypatch, capsys):
    # The figure of a report is drawn after its tables: the tables are the checks.
    with stopped_after_checks(monkeypatch, "lmzoo.reports.report.figure_section"):
        run_command("compare", argv, world / "runs", monkeypatch, capsys)


@fuzz(COMPARE_DEFAULT)
@given(data=st.data())
def test_compare_holds_the_contract(world, data, monkeypatch, capsys):
    check_compare(world, data.draw(compare_arguments(world)), monkeypatch, capsys)


@pytest.mark.slow
@fuzz(SLOW)
@given(data=st.data())
def test_compare_holds_the_contract_slow(world, data, monkeypatch, capsys):
    check_compare(world, data.draw(compare_arguments(world)), monkeypatch, capsys)


@pytest.fixture(autouse=True)
def in_a_folder_of_its_own(tmp_path, monkeypatch):
    """Relative paths a drawn value names land in the test's folder."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    yield
    os.chdir(tmp_path)
