"""The shape of the package a user relies on: plain PyTorch below Lightning, and the README's Python example."""

import re
import subprocess
import sys

import pytest
from helpers import REPO


@pytest.mark.parametrize("package", ["lmzoo.models", "lmzoo.data", "lmzoo.inference", "lmzoo.checkpoints"])
def test_plain_pytorch_packages_import_neither_lightning_nor_hydra(package):
    check = f"import sys, {package}; print(sorted(m for m in ('lightning', 'hydra') if m in sys.modules))"
    result = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


def test_the_readme_python_example_trains_and_samples_in_a_plain_loop():
    readme = (REPO / "README.md").read_text()
    (block,) = re.findall(r"```python\n(.*?)```", readme, flags=re.S)
    result = subprocess.run([sys.executable, "-c", block], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    loss, sample = result.stdout.split("\n", 1)
    # From ln 65 = 4.17 at the start.
    assert float(loss.removeprefix("loss ")) < 2.6
    assert len(sample.strip()) > 50
