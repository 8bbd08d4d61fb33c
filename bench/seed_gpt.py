"""The seed's GPT, run by its own program, against lmzoo's `gpt`, every loss measured both ways (issue 14 §8).

    python bench/seed_gpt.py --seed-repo DIR --out OUT --lmzoo-runs /work/ablation/unit_mlp_s{1,2,3}
    python bench/seed_gpt.py --seed-repo DIR --seeds 1337 --dropouts 0.0 --max-iters 20 --eval-iters 5  # smoke

DIR is a checkout of github.com/ai-bot-pro/baby-llm (the seed); nothing of it is part of lmzoo. It is copied
into OUT (a temporary folder without --out), its data folder gets tinyshakespeare from ../shared (so its
prepare.py downloads nothing) and its own `simpleLM/datasets/shakespeare_char/prepare.py` writes its bins.

- **The seed's runs**: `simpleLM/train.py` as a whole process, `--model_name=gptLM` at the issue's budget (4
  layers, 4 heads, width 128, block 64, batch 16, `--max-iters` steps, lr 1e-3) with its own evaluation every
  `--eval-interval` iterations (default 250) on `--eval-iters` random batches of each split (default 200, its
  own default), once per seed and dropout (the program's default dropout is 0.2). train.py seeds with a
  hard-coded `torch.manual_seed(1337)`; to vary the seed without editing it, each run goes through
  SEEDED_TRAIN below, which replaces `torch.manual_seed` by a call with the chosen seed and runs train.py with
  runpy. With --out, a finished run (its output and weights in OUT/gptLM-dropout-D-seed-S) is not run again.
- **lmzoo's runs**: the best-validation checkpoints (`checkpoints/best.ckpt`) of the finished runs (their
  summary.json says done) under each folder of `--lmzoo-runs`, labelled by the folder's name less a trailing `_sN`.

Every model is then measured four ways, the first the program's own and the others the same for all:
- **own**: the seed's smallest printed val loss (its `estimate_loss`, fresh random batches each time, the
  lowest of the evaluations); lmzoo's `best_val_loss` from the run's summary.json.
- **random batches**: the seed's estimator, `--eval-iters` batches of 16 x 64 drawn the seed's way
  (`torch.randint(len(val) - 64, (16,))`) from a generator seeded with RANDOM_BATCHES_SEED, so every model
  sees the same batches; its standard error across batches is printed beside it.
- **lmzoo windows**: lmzoo's own validation, `TokenDataModule.val_dataloader()` of the `train` config with
  `block_size=64 data.batch_size=16 data.val_batches=20`, averaged over batches as `val/loss` is.
- **every token**: `lmzoo.inference.evaluation.split_loss` over the whole held-out text: the seed's val split,
  lmzoo's validation and test splits together (lmzoo keeps the last half of it for test).

The seed's weights load into its own `GPTLanguageModel`, imported from the copy. Both programs must give the
validation split the same token ids (the sorted characters, the last 10% of the text); the script checks
this and stops if they differ. Then: one table of every run, the mean ± std of each variant, and Welch's
t-test of every lmzoo variant against every seed variant with at least two runs.
"""

import argparse
import contextlib
import json
import os
import pickle
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from common import TINYSHAKESPEARE, compose_train
from hydra.utils import instantiate

from lmzoo.checkpoints.load import load_model
from lmzoo.data.tokenizer import tokenizer_from_spec
from lmzoo.inference.evaluation import split_loss
from lmzoo.models.base import ModelOutput
from lmzoo.reports.stats import welch_t_test
from lmzoo.training.datamodule import TokenDataModule

# The budget, in train.py's --key=value arguments (its defaults are a larger model).
SEED_BUDGET = ["--model_name=gptLM", "--dataset=shakespeare_char", "--n_layer=4", "--n_head=4", "--n_embd=128",
               "--block_size=64", "--batch_size=16", "--learning_rate=1e-3"]
BLOCK_SIZE, BATCH_SIZE = 64, 16
LMZOO_WINDOWS = [f"block_size={BLOCK_SIZE}", f"data.batch_size={BATCH_SIZE}", "data.val_batches=20"]
# Runs train.py (argv[2], with argv[3:] as its arguments) as `python train.py` would, but with its one
# torch.manual_seed(1337) call seeding with argv[1]. runpy sets __file__, which train.py reads to find its
# data; its folder goes on sys.path, as for a script, so that `from gptLM import ...` works.
SEEDED_TRAIN = """
import os, runpy, sys, torch
seed, seed_torch = int(sys.argv[1]), torch.manual_seed
torch.manual_seed = lambda _hard_coded: seed_torch(seed)
sys.argv = sys.argv[2:]
sys.path.insert(0, os.path.dirname(os.path.abspath(sys.argv[0])))
runpy.run_path(sys.argv[0], run_name="__main__")
"""
EVALUATION = re.compile(r">>> step (\d+): train loss [\d.]+, val loss ([\d.]+)")
RANDOM_BATCHES_SEED = 0
MEASURES = ["own", "random batches", "lmzoo windows", "every token"]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed-repo", type=Path, required=True, help="a checkout of ai-bot-pro/baby-llm")
    parser.add_argument("--out", type=Path, help="keep the seed's copy and runs here, and reuse finished runs")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1337, 1, 2])
    parser.add_argument("--dropouts", type=float, nargs="+", default=[0.0, 0.2])
    parser.add_argument("--max-iters", type=int, default=1000)
    parser.add_argument("--eval-interval", type=int, default=250)
    parser.add_argument("--eval-iters", type=int, default=200, help="random batches of each estimate")
    parser.add_argument("--lmzoo-runs", type=Path, nargs="*", default=[],
                        help="folders holding lmzoo runs (a run, or a sweep of them)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads, here and in the seed's runs")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    keep = contextlib.nullcontext(args.out) if args.out else tempfile.TemporaryDirectory(prefix="lmzoo-seed-gpt-")
    with keep as out:
        out = Path(out)
        seed_repo = set_up_seed(args.seed_repo.expanduser().resolve(), out / "baby-llm")
        seed_data = seed_repo / "simpleLM" / "datasets" / "shakespeare_char"
        val_tokens, windows = lmzoo_validation(out / "lmzoo-data", seed_data)
        print(f"load average at start: {os.getloadavg()[0]:.1f}; {args.threads} thread(s)", flush=True)

        rows = []
        for seed in args.seeds:
            for dropout in args.dropouts:
                run = out / f"gptLM-dropout-{dropout}-seed-{seed}"
                own, weights = train_seed(seed_repo, run, seed, dropout, args)
                model = seed_model(seed_repo, weights, dropout)
                rows.append(measured(f"seed gptLM, dropout {dropout}", seed, own, model, val_tokens, windows,
                                     args.eval_iters))
        for folder in args.lmzoo_runs:
            for summary_file in sorted(folder.glob("**/summary.json")):
                run, summary = summary_file.parent, json_file(summary_file)
                if summary["status"] != "done":
                    continue
                model, tokenizer, _ = load_model(run / "checkpoints" / "best.ckpt")
                check_characters(tokenizer, seed_data, run)
                seed = json_file(run / "provenance.json")["config"]["seed"]
                variant = f"lmzoo {re.sub(r'_s[0-9]+$', '', folder.name)}"
                rows.append(measured(variant, seed, summary["best_val_loss"], model, val_tokens, windows,
                                     args.eval_iters))
        print(f"load average at end: {os.getloadavg()[0]:.1f}\n")
        report(rows, args.eval_iters)


def set_up_seed(source: Path, copy: Path) -> Path:
    """A copy of the checkout with tinyshakespeare prepared by its own prepare.py (kept if already there)."""
    if not (source / "simpleLM" / "train.py").is_file() or not (source / "simpleLM" / "gptLM.py").is_file():
        sys.exit(f"error: {source} is not a baby-llm checkout (no simpleLM/train.py and simpleLM/gptLM.py)")
    data = copy / "simpleLM" / "datasets" / "shakespeare_char"
    if not (data / "val.bin").is_file():
        shutil.rmtree(copy, ignore_errors=True)
        shutil.copytree(source, copy, ignore=shutil.ignore_patterns(".git", "*.pth"))
        shutil.copyfile(TINYSHAKESPEARE, data / "input.txt")
        subprocess.run([sys.executable, "prepare.py"], cwd=data, check=True, capture_output=True)
    return copy


def lmzoo_validation(data_dir: Path, seed_data: Path) -> tuple[np.ndarray, list]:
    """The held-out tokens (lmzoo's validation then test split: the seed's val split, once checked to be its ids)
    and lmzoo's val_dataloader's batches."""
    config = compose_train([f"data.path={TINYSHAKESPEARE}", f"paths.data_dir={data_dir}", *LMZOO_WINDOWS])
    datamodule = TokenDataModule(instantiate(config.data, _convert_="all"))
    datamodule.prepare_data()
    datamodule.setup("validate")
    check_characters(tokenizer_from_spec(datamodule.meta.tokenizer), seed_data, "lmzoo's data")
    tokens = np.concatenate([np.fromfile(datamodule.config.data_dir / f"{split}.bin", dtype=datamodule.meta.dtype)
                             for split in ("val", "test")])
    if not np.array_equal(tokens, np.fromfile(seed_data / "val.bin", dtype=np.uint16)):
        sys.exit("error: the seed's and lmzoo's held-out tokens differ; the losses would not be on the same text")
    return tokens, list(datamodule.val_dataloader())


def check_characters(tokenizer, seed_data: Path, whose) -> None:
    characters = pickle.loads((seed_data / "meta.pkl").read_bytes())["itos"]
    if tokenizer.encode("".join(characters[i] for i in range(len(characters)))) != list(range(len(characters))):
        sys.exit(f"error: the seed's and {whose}'s character ids differ")


def train_seed(seed_repo: Path, run: Path, seed: int, dropout: float, args) -> tuple[float, Path]:
    """The seed's smallest printed val loss and the weights it saved at that evaluation."""
    log = run / "output.txt"
    last = args.max_iters - 1
    finished = log.is_file() and any(int(step) == last for step, _ in EVALUATION.findall(log.read_text()))
    if not finished:
        shutil.rmtree(run, ignore_errors=True)
        run.mkdir(parents=True)
        command = [sys.executable, "-c", SEEDED_TRAIN, str(seed), str(seed_repo / "simpleLM" / "train.py"),
                   *SEED_BUDGET, f"--dropout={dropout}", f"--max_iters={args.max_iters}",
                   f"--eval_interval={args.eval_interval}", f"--eval_iters={args.eval_iters}"]
        env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
        start = time.perf_counter()
        with open(log, "w") as output:
            # train.py writes its weights and loss log into its working directory.
            code = subprocess.run(command, cwd=run, env=env, stdout=output, stderr=subprocess.STDOUT).returncode
        if code != 0:
            sys.exit(f"failed ({code}): the seed's run in {run}; see {log}")
        print(f"seed gptLM, dropout {dropout}, seed {seed}: trained in {time.perf_counter() - start:.0f} s",
              flush=True)
    (weights,) = run.glob("loss_*.pth")
    return min(float(loss) for _, loss in EVALUATION.findall(log.read_text())), weights


class SeedModel(torch.nn.Module):
    """The seed's GPTLanguageModel as lmzoo's evaluation reads a model: logits in a ModelOutput, block_size, device."""

    def __init__(self, gpt: torch.nn.Module):
        super().__init__()
        self.gpt = gpt
        # gptLM places its position ids on CUDA whenever torch sees a GPU; this bench runs on the CPU.
        self.block_size, self.device = gpt.block_size, torch.device("cpu")

    def forward(self, x):
        logits, _ = self.gpt(x)
        return ModelOutput(logits)


def seed_model(seed_repo: Path, weights: Path, dropout: float) -> SeedModel:
    sys.path.insert(0, str(seed_repo / "simpleLM"))
    from gptLM import GPTLanguageModel

    vocab_size = pickle.loads((seed_repo / "simpleLM/datasets/shakespeare_char/meta.pkl").read_bytes())["vocab_size"]
    gpt = GPTLanguageModel(vocab_size, n_embd=128, block_size=BLOCK_SIZE, n_layer=4, n_head=4, dropout=dropout)
    gpt.load_state_dict(torch.load(weights, map_location="cpu"))
    return SeedModel(gpt).eval()


@torch.no_grad()
def measured(variant: str, seed: int, own: float, model, val_tokens: np.ndarray, windows: list,
             random_batches: int) -> dict:
    """One row of the table: the run's own loss and the three losses measured the same way for every model."""
    start = time.perf_counter()
    batch_losses = random_batch_losses(model, val_tokens, random_batches)
    row = {"variant": variant, "seed": seed, "own": own,
           "random batches": statistics.fmean(batch_losses),
           "random batches se": statistics.stdev(batch_losses) / len(batch_losses) ** 0.5,
           "lmzoo windows": statistics.fmean(batch_loss(model, x, y) for x, y in windows),
           "every token": split_loss(model, val_tokens, BATCH_SIZE)[0]}
    print(f"{variant}, seed {seed}: " + ", ".join(f"{name} {row[name]:.4f}" for name in MEASURES)
          + f" (measured in {time.perf_counter() - start:.0f} s)", flush=True)
    return row


def random_batch_losses(model, val_tokens: np.ndarray, batches: int) -> list[float]:
    """The seed's estimate_loss on the validation split: each batch's mean loss, batches drawn the seed's way."""
    generator = torch.Generator().manual_seed(RANDOM_BATCHES_SEED)
    tokens = torch.from_numpy(val_tokens.astype(np.int64))
    losses = []
    for _ in range(batches):
        starts = torch.randint(len(tokens) - BLOCK_SIZE, (BATCH_SIZE,), generator=generator)
        rows = torch.stack([tokens[start : start + BLOCK_SIZE + 1] for start in starts])
        losses.append(batch_loss(model, rows[:, :-1], rows[:, 1:]))
    return losses


def batch_loss(model, x: torch.Tensor, y: torch.Tensor) -> float:
    logits = model(x).logits
    return torch.nn.functional.cross_entropy(logits.flatten(0, 1).float(), y.flatten()).item()


def json_file(path: Path) -> dict:
    return json.loads(path.read_text())


def report(rows: list[dict], random_batches: int) -> None:
    print(f"| program, variant | seed | own | random batches ({random_batches} x {BATCH_SIZE} x {BLOCK_SIZE}) "
          "| lmzoo windows (20 x 16 x 64) | every val token |")
    print("| --- | --- | --- | --- | --- | --- |")
    for row in rows:
        print(f"| {row['variant']} | {row['seed']} | {row['own']:.4f} | {row['random batches']:.4f} "
              f"± {row['random batches se']:.4f} | {row['lmzoo windows']:.4f} | {row['every token']:.4f} |")

    variants = {row["variant"]: [r for r in rows if r["variant"] == row["variant"]] for row in rows}
    print("\n| program, variant | n | " + " | ".join(MEASURES) + " |")
    print("| --- | --- |" + " --- |" * len(MEASURES))
    for variant, runs in variants.items():
        print(f"| {variant} | {len(runs)} | "
              + " | ".join(mean_std([run[name] for run in runs]) for name in MEASURES) + " |")

    pairs = [(a, b) for a in variants for b in variants
             if a.startswith("lmzoo") and b.startswith("seed") and len(variants[a]) > 1 and len(variants[b]) > 1]
    if pairs:
        print("\nlmzoo minus seed, mean difference (Welch's t-test, two-sided p)")
        print("| lmzoo | seed | " + " | ".join(MEASURES) + " |")
        print("| --- | --- |" + " --- |" * len(MEASURES))
    for a, b in pairs:
        cells = []
        for name in MEASURES:
            ours, theirs = [run[name] for run in variants[a]], [run[name] for run in variants[b]]
            test = welch_t_test(ours, theirs)
            cells.append(f"{statistics.fmean(ours) - statistics.fmean(theirs):+.4f} (p {test.p:.2g})")
        print(f"| {a} | {b} | " + " | ".join(cells) + " |")


def mean_std(values: list[float]) -> str:
    spread = f" ± {statistics.stdev(values):.4f}" if len(values) > 1 else ""
    return f"{statistics.fmean(values):.4f}{spread}"


if __name__ == "__main__":
    main()
