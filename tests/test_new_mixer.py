"""README's "Adding an architecture", done as a contributor would: a mixer's file copied under a new name with its
class and registered name renamed, and one preset naming it, with no other edit. The copy is trained, sampled with
its cache, adapted by LoRA, counted, described and exported by the zoo's and the mixers' own tests, run as they are
on a copy of the package that holds the two new files."""

import inspect
import os
import re
import shutil
import subprocess
import sys

from helpers import REPO, SHARED

from lmzoo.models.base import SequenceMixer
from lmzoo.models.presets import preset, preset_names, presets_folder

# The mixer to copy: a recurrence with a transformers class, so that every test has something to prove of it.
ORIGINAL = next(mixer for mixer in SequenceMixer.registry.values() if mixer.scan is not None and mixer.hf is not None)
# The preset that holds it alone, and the names of the copy.
PRESET = next(name for name in preset_names() if preset(name).settings.get("layer_pattern") == [ORIGINAL.name])
NAME, CLASS = f"{ORIGINAL.name}_copy", f"{ORIGINAL.__name__}Copy"
IGNORED = shutil.ignore_patterns("__pycache__", "*.egg-info", "fixtures", ".pytest_cache")


def test_a_copied_mixer_file_and_one_preset_pass_the_zoo_and_mixer_tests(tmp_path):
    package = tmp_path / "src" / "lmzoo"
    shutil.copytree(REPO / "src" / "lmzoo", package, ignore=IGNORED)
    shutil.copytree(presets_folder().parent, package / "conf", ignore=IGNORED)
    shutil.copytree(REPO / "tests", tmp_path / "tests", ignore=IGNORED)
    shutil.copy(REPO / "pyproject.toml", tmp_path)
    # The contributor's two files: the mixer's module renamed, and its preset naming the copy.
    source = inspect.getsource(inspect.getmodule(ORIGINAL))
    copied = re.sub(rf"\b{ORIGINAL.__name__}\b", CLASS, source).replace(f'name="{ORIGINAL.name}"', f'name="{NAME}"')
    assert copied.count(CLASS) > 1 and f'name="{NAME}"' in copied
    (package / "models" / f"{NAME}.py").write_text(copied)
    yaml = (presets_folder() / f"{PRESET}.yaml").read_text()
    (package / "conf" / "model" / f"{NAME}.yaml").write_text(re.sub(rf"\b{ORIGINAL.name}\b", NAME, yaml))

    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path / "src"), str(tmp_path / "tests")]),
           "LMZOO_SHARED": str(SHARED), "OMP_NUM_THREADS": "1"}
    found = subprocess.run([sys.executable, "-c", f"import lmzoo.models as m; print(m.__file__); "
                            f"print(m.base.SequenceMixer.registry['{NAME}'].__name__)"],
                           cwd=tmp_path, env=env, capture_output=True, text=True, check=True).stdout.split()
    assert found == [str(package / "models" / "__init__.py"), CLASS]
    result = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-n", "0", "-q", "-k", NAME,
                             "tests/test_zoo.py", "tests/test_mixers.py", "tests/test_interop.py"],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    summary = result.stdout.strip().splitlines()[-1]
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    # Every zoo test of the preset (causality, loss, cached decoding, FLOPs, LoRA, export, describe, resume), the
    # recurrence against its steps, and its export examples.
    passed = int(re.search(r"(\d+) passed", summary).group(1))
    assert passed >= 18 and "failed" not in summary, summary
