"""The shape of the package a user relies on: plain PyTorch below Lightning, and the README's Python example."""

import re
import subprocess
import sys

import pytest
from helpers import REPO, SHAKESPEARE, TINY, run


@pytest.mark.parametrize("package", ["lmzoo.models", "lmzoo.data", "lmzoo.inference", "lmzoo.checkpoints"])
def test_plain_pytorch_packages_import_neither_lightning_nor_hydra(package):
    check = f"import sys, {package}; print(sorted(m for m in ('lightning', 'hydra') if m in sys.modules))"
    result = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


def test_the_reports_and_the_configs_read_training_without_loading_lightning():
    """compare, scaling and plot read summary.json through lmzoo.training.summary, and every command's configs
    register OptimConfig's and TuneSettings' defaults: importing a module of lmzoo.training loads Lightning only
    where that module uses it, and then without torchmetrics' heavy imports."""
    check = ("import sys, lmzoo.reports.report, lmzoo.reports.scaling, lmzoo.reports.tune, lmzoo.conf; before = "
             "'lightning' in sys.modules; import lmzoo.training.module; print(before, 'lightning' in sys.modules, "
             "sorted(m for m in ('transformers', 'matplotlib') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False True []"


def test_sampling_and_evaluating_commands_start_without_lightning():
    """generate's start-up is most of its time (bench/README.md): its command, and evaluate's, load neither
    Lightning nor the training checks that load it, even to explain a mistake."""
    check = "import sys, lmzoo.cli.generate, lmzoo.cli.evaluate; print('lightning' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"


# Installed with lmzoo, but used only by export, Hugging Face tokenizers, `datasets` sources and plots.
HEAVY = ("transformers", "datasets", "matplotlib", "tokenizers")


def imported_modules(result) -> set[str]:
    """The top-level modules a process run with PYTHONPROFILEIMPORTTIME imported, from its stderr."""
    lines = re.findall(r"^import time:.*\| *(\S+)$", result.stderr, flags=re.M)
    assert lines, result.stderr[-2000:]
    return {name.split(".")[0] for name in lines}


def test_training_and_sampling_do_not_import_the_heavy_optional_packages(tmp_path):
    profile = {"PYTHONPROFILEIMPORTTIME": "1"}
    trained = run("lmzoo.train", *TINY, "trainer.max_steps=2", "trainer.val_check_interval=2", f"data.path={SHAKESPEARE}",
                  "hydra.run.dir=run", "sample_tokens=5", cwd=tmp_path, env=profile)
    assert "lightning" in imported_modules(trained)
    assert not imported_modules(trained) & set(HEAVY)
    generated = run("lmzoo.generate", f"ckpt={tmp_path / 'run/checkpoints/best.ckpt'}", "max_new_tokens=5",
                    cwd=tmp_path, env=profile)
    assert "torch" in imported_modules(generated)
    assert not imported_modules(generated) & set(HEAVY)


def test_the_readme_python_example_trains_and_samples_in_a_plain_loop():
    readme = (REPO / "README.md").read_text()
    (block,) = re.findall(r"```python\n(.*?)```", readme, flags=re.S)
    result = subprocess.run([sys.executable, "-c", block], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    loss, sample = result.stdout.split("\n", 1)
    # From ln 65 = 4.17 at the start.
    assert float(loss.removeprefix("loss ")) < 2.6
    assert len(sample.strip()) > 50
