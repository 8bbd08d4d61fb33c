"""What a run records of its machine, and repro=true: the kernels held at AVX2 from the command line, before torch
loads, so that a run gives the same bits on any x86-64 CPU."""

import json

import pytest
from helpers import compose_train, train_process

from lmzoo.errors import UserError
from lmzoo.machine import REPRO_ENVIRONMENT, repro_asked
from lmzoo.training.run import train


@pytest.fixture
def no_repro_environment(monkeypatch):
    for key in REPRO_ENVIRONMENT:
        monkeypatch.delenv(key, raising=False)


def test_repro_true_on_the_command_line_reaches_the_kernels_and_provenance_records_the_machine(tmp_path, no_repro_environment):
    """On an AVX-512 CPU torch would choose AVX512 kernels; the trained process reports what it ran on."""
    result = train_process(tmp_path, "trainer.max_steps=2", "repro=true")
    assert result.returncode == 0, result.stderr
    machine = json.loads((tmp_path / "run" / "provenance.json").read_text())["machine"]
    assert machine["torch_cpu_capability"] in ("AVX2", "DEFAULT")
    assert machine["environment"] == REPRO_ENVIRONMENT
    assert machine["cpu"] and machine["torch"] and machine["threads"] == 1
    assert machine["mkl"] and machine["onednn"].startswith("v")


def test_repro_true_from_a_process_where_torch_has_loaded_is_one_line(tmp_path, no_repro_environment):
    """Composed where the variables are not set (a preset, or a process that imported torch first), it would
    silently run the CPU's own kernels."""
    with pytest.raises(UserError, match="repro=true holds the kernels at AVX2 only when typed on the command line"):
        train(compose_train(tmp_path, "repro=true"))
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("arguments, asked", [
    (["repro=true"], True), (["model=mlp", "+repro=True"], True), (["repro=true", "repro=false"], False),
    (["repro=true,false"], False), (["reprox=true"], False), ([], False),
])
def test_the_command_line_asks_for_repro_as_its_last_repro_key_says(arguments, asked):
    assert repro_asked(arguments) is asked
