"""Make the folder that bench/gpu.py and `python -m pytest -m gpu` read on a GPU machine with no network and
no ../shared. Run it here, on CPU; the folder travels with the checkout (git ignores it).

    python bench/gpu_data.py [--out .gpu-data] [--nanogpt DIR] [--wheels]

Under OUT (default .gpu-data/ in the checkout):
- corpus.txt: the shared corpora (tinyshakespeare, the TinyStories slice, 红楼梦), one after another;
- corpus/gpt2/: its GPT-2 tokens, prepared by lmzoo (train.bin, val.bin and test.bin, flat uint16 token ids, which is
  nanoGPT's format too, and meta.json), so lmzoo and nanoGPT read the same tokens and nothing is tokenized there;
- shared/: what the tests read (LMZOO_SHARED=OUT/shared): data/tinyshakespeare.txt and the tiktoken cache;
- nanogpt/: train.py, model.py and configurator.py of a nanoGPT checkout (--nanogpt DIR), nothing else of it;
- wheels/: lmzoo and the packages it needs that the GPU machine lacks (hydra-core, omegaconf and its antlr4
  runtime, pytest-xdist and execnet), built by pip from the versions installed here (--wheels).
"""

import argparse
import os
import shutil
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

from common import REPO, SHARED, compose_train
from hydra.utils import instantiate

CORPORA = ["tinyshakespeare.txt", "tinystories-valid.txt", "hongloumeng.txt"]
NANOGPT_FILES = ["train.py", "model.py", "configurator.py"]
# What lmzoo needs beyond the GPU machine's own packages (torch, lightning, tiktoken, tensorboard, numpy, ...).
# pytest-xdist (and its execnet): pyproject's addopts give pytest -n.
MISSING_THERE = ["hydra-core", "omegaconf", "antlr4-python3-runtime", "pytest-xdist", "execnet"]


def corpus_overrides(out: Path) -> list[str]:
    """The data settings of every lmzoo run on the corpus: prepared here, found complete there."""
    return ["data=text", "data.name=corpus", f"data.path={out / 'corpus.txt'}", f"paths.data_dir={out}"]


def corpus_bins(out: Path) -> Path:
    """The folder of the corpus's GPT-2 bins (lmzoo keeps each tokenizer's bins apart: DATA_DIR/NAME/TOKENIZER)."""
    return instantiate(compose_train(corpus_overrides(out)).data, _convert_="all").data_dir


def prepare_corpus(out: Path, shared: Path) -> dict:
    """corpus.txt and its GPT-2 bins under `out`; the bins' meta.json."""
    from lmzoo.data import prepare

    out.mkdir(parents=True, exist_ok=True)
    text = "\n\n".join((shared / "data" / name).read_text(encoding="utf-8") for name in CORPORA)
    (out / "corpus.txt").write_text(text, encoding="utf-8")
    os.environ.setdefault("TIKTOKEN_CACHE_DIR", str(shared / "tiktoken-cache"))
    cfg = compose_train([*corpus_overrides(out), "block_size=1024"])
    return prepare(instantiate(cfg.data, _convert_="all"))


def copy_shared_for_tests(out: Path, shared: Path) -> None:
    (out / "shared" / "data").mkdir(parents=True, exist_ok=True)
    shutil.copy(shared / "data" / "tinyshakespeare.txt", out / "shared" / "data" / "tinyshakespeare.txt")
    # Some test modules load GPT-2's tokenizer when they are collected, which offline needs its files.
    shutil.copytree(shared / "tiktoken-cache", out / "shared" / "tiktoken-cache", dirs_exist_ok=True)


def copy_nanogpt(out: Path, checkout: Path) -> None:
    (out / "nanogpt").mkdir(parents=True, exist_ok=True)
    for name in NANOGPT_FILES:
        shutil.copy(checkout / name, out / "nanogpt" / name)


def build_wheels(out: Path) -> None:
    wanted = [f"{name}=={version(name)}" for name in MISSING_THERE]
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--wheel-dir", str(out / "wheels"),
                    str(REPO), *wanted], check=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=REPO / ".gpu-data",
                        help="the folder to write (default: %(default)s)")
    parser.add_argument("--shared", type=Path, default=SHARED, help="the shared data folder (default: %(default)s)")
    parser.add_argument("--nanogpt", type=Path,
                        help="a nanoGPT checkout to take train.py, model.py and configurator.py from")
    parser.add_argument("--wheels", action="store_true", help="build the wheels the GPU machine lacks")
    args = parser.parse_args(argv)
    if args.nanogpt and not (args.nanogpt / "train.py").is_file():
        parser.error(f"{args.nanogpt} holds no train.py; pass a nanoGPT checkout")
    meta = prepare_corpus(args.out, args.shared)
    copy_shared_for_tests(args.out, args.shared)
    if args.nanogpt:
        copy_nanogpt(args.out, args.nanogpt)
    if args.wheels:
        build_wheels(args.out)
    splits = ", ".join(f"{split} {size.tokens:,}" for split, size in meta.splits.items())
    print(f"{args.out}: GPT-2 tokens of the shared corpora ({splits}); "
          f"carry it with the checkout and set LMZOO_SHARED={args.out / 'shared'} for the tests")


if __name__ == "__main__":
    main()
