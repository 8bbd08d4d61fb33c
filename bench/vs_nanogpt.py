"""lmzoo against nanoGPT on nanoGPT's documented CPU run, whole processes side by side.

    python bench/vs_nanogpt.py --nanogpt DIR            # DIR: a checkout of github.com/karpathy/nanoGPT
    python bench/vs_nanogpt.py --nanogpt DIR --pairs 3 --max-iters 2000 --sample-pairs 5
    python bench/vs_nanogpt.py --nanogpt DIR --pairs 1 --max-iters 20 --eval-interval 10 --sample-pairs 1  # smoke
    python bench/vs_nanogpt.py --nanogpt DIR --config shakespeare --pairs 3 --max-iters 200 --sample-pairs 0
    python bench/vs_nanogpt.py --nanogpt DIR --config shakespeare --batch-size 16 --threads 2 --pairs 3 --max-iters 40 --sample-pairs 0
    python bench/vs_nanogpt.py --nanogpt DIR --as-typed --pairs 3 --max-iters 600 --sample-pairs 0
    python bench/vs_nanogpt.py --nanogpt DIR --as-typed --lmzoo model.ffns.mlp.activation=gelu_erf model.bias=false \
        --pairs 3 --max-iters 600

`--config cpu` (the default) is nanoGPT's README CPU command, below. `--config shakespeare` is its
config/train_shakespeare_char.py as that file says to run it on a CPU (`--device=cpu --compile=False`): 6 layers,
6 heads, width 384, block 256, batch 64, dropout 0.2, with `--eval_iters=20` and one evaluation, at the last
iteration (`--eval-interval` defaults to `--max-iters` there); lmzoo trains the same model with its defaults for
everything else, `trainer.precision=auto` and `compile=auto` included (each decided by measuring on the machine: lmzoo.training.acceleration).
The CPU's model name and its `amx_bf16` and `avx512_bf16` flags are printed first: record them beside the numbers.

`--batch-size N` sets both programs' batch size (nanoGPT's `--batch_size`, lmzoo's `data.batch_size`).

`--as-typed` trains lmzoo's `model=gpt` as a user types it with nanoGPT's sizes: GPT-2's biases, tanh GELU,
padded vocabulary and untied head, not nanoGPT's model (so the same-text evaluation, which loads nanoGPT's
weights into lmzoo's model, is skipped). `--lmzoo KEY=VALUE ...` adds overrides to lmzoo's command.

Nothing of nanoGPT is part of lmzoo: DIR is copied into a temporary folder, its data folder gets
tinyshakespeare from ../shared (so its prepare.py downloads nothing) and its own prepare.py writes its bins.
lmzoo prepares the same text (first 90% to train, the rest to validate, as nanoGPT's split) beforehand, so
neither program's timed run prepares data.

- **train**: nanoGPT's `train.py` with its README's CPU command (4 layers, 4 heads, width 128, block 64, batch
  12, lr 1e-3 with 100 warmup iterations and cosine decay to 1e-4 at `--max-iters`, evaluation every 250
  iterations, `--eval_iters=20`) against `python -m lmzoo.train` with the same model, batch, schedule and
  evaluation cadence (`LMZOO_MODEL`: nanoGPT's model is GPT-2's without biases, with the exact GELU and an
  unpadded vocabulary, and tied embeddings as GPT-2's: `model.tie_embeddings=true`, since `gpt`'s default is
  untied, so that both programs train the same model). nanoGPT's evaluation runs `eval_iters` batches of each split, lmzoo's 40 fixed
  validation batches, so both evaluate 480 windows each time.
- **val loss on the same text**: the two programs estimate their validation loss differently (nanoGPT on 20
  random batches, lmzoo on fixed windows), so after the runs both final checkpoints are also evaluated, in
  lmzoo's model (nanoGPT's weights load into it name for name), on every token of nanoGPT's `val.bin`, once
  checked to be lmzoo's validation split token for token.
- **sample**: nanoGPT's `sample.py` (500 tokens, one sample, top-k 200, temperature 0.8) against
  `python -m lmzoo.generate` with the same settings, each on the checkpoint its last training run wrote.

Both programs' own modules are byte-compiled before the runs (as an installed package's are, and as a second run
of a checkout finds them), so that neither run compiles its source where PYTHONDONTWRITEBYTECODE is set.

Runs alternate, A B then B A (`--start-with` names A), for `--pairs` (train) and `--sample-pairs` (sample) pairs;
each is one whole process (start-up, imports, data loading, training, evaluation, checkpoints, shut-down), at this
process's priority, with `--threads` threads each (default 1). Printed: wall and user CPU seconds of every run,
nanoGPT's and lmzoo's final validation loss, and the median of the per-pair ratios lmzoo / nanoGPT (below 1: lmzoo
is faster).
"""

import argparse
import json
import os
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TINYSHAKESPEARE = REPO.parent / "shared" / "data" / "tinyshakespeare.txt"

# nanoGPT's README, "I only have a macbook": the CPU run, with the iterations set by --max-iters.
NANOGPT_CPU = ["--device=cpu", "--compile=False", "--eval_iters=20", "--log_interval=1", "--block_size=64",
               "--batch_size=12", "--n_layer=4", "--n_head=4", "--n_embd=128", "--dropout=0.0"]
# nanoGPT's model (model.py with train.py's bias=False) in lmzoo's terms.
LMZOO_MODEL = ["model=gpt", "model.tie_embeddings=true", "model.bias=false", "model.ffns.mlp.activation=gelu_erf",
               "model.pad_vocab_to=1", "model.n_layer=4", "model.n_head=4", "model.n_embd=128", "model.dropout=0.0"]
# The rest of config/train_shakespeare_char.py with the CPU command's changes. nanoGPT evaluates eval_iters
# batches of each split, so lmzoo validates on twice as many batches.
LMZOO_RUN = ["block_size=64", "data.batch_size=12", "data.val_batches=40", "optim.lr=1e-3", "optim.min_lr=1e-4",
             "optim.weight_decay=0.1", "optim.beta2=0.99", "trainer.gradient_clip_val=1.0",
             "sample_tokens=0"]
# config/train_shakespeare_char.py as its comments say to run it on a CPU, evaluating on 20 batches of each split.
NANOGPT_SHAKESPEARE = ["--device=cpu", "--compile=False", "--eval_iters=20", "--log_interval=1"]
SHAKESPEARE_SIZES = {"n_layer": 6, "n_head": 6, "n_embd": 384, "dropout": 0.2}
CONFIGS = {
    # nanoGPT's arguments, lmzoo's overrides, the context, and the default --eval-interval (None: --max-iters).
    "cpu": (NANOGPT_CPU, [*LMZOO_MODEL, *LMZOO_RUN], 64, 250),
    "shakespeare": (NANOGPT_SHAKESPEARE,
                    [*LMZOO_MODEL, *(f"model.{key}={value}" for key, value in SHAKESPEARE_SIZES.items()),
                     *(override for override in LMZOO_RUN if not override.startswith(("block_size", "data."))),
                     "block_size=256", "data.batch_size=64", "data.val_batches=40"], 256, None),
}
# The overrides that make lmzoo's gpt nanoGPT's model; --as-typed leaves them out.
NANOGPT_MODEL_CHOICES = ("model.tie_embeddings", "model.bias", "model.ffns.mlp.activation", "model.pad_vocab_to")
SAMPLE = {"max_new_tokens": 500, "top_k": 200, "temperature": 0.8}


def timed(command: list[str], cwd: Path, env: dict) -> tuple[float, float, str]:
    """Wall seconds, user CPU seconds and output of one whole process; exits if it fails."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_utime
    start = time.perf_counter()
    finished = subprocess.run(command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    wall = time.perf_counter() - start
    if finished.returncode != 0:
        sys.exit(f"failed ({finished.returncode}): {' '.join(command)}\n{finished.stdout[-3000:]}")
    return wall, resource.getrusage(resource.RUSAGE_CHILDREN).ru_utime - before, finished.stdout


def set_up_nanogpt(source: Path, work: Path) -> Path:
    """A copy of the checkout with tinyshakespeare prepared by its own prepare.py."""
    if not (source / "train.py").is_file() or not (source / "sample.py").is_file():
        sys.exit(f"error: {source} is not a nanoGPT checkout (no train.py and sample.py)")
    copy = work / "nanoGPT"
    shutil.copytree(source, copy, ignore=shutil.ignore_patterns(".git", "out*"))
    data = copy / "data" / "shakespeare_char"
    shutil.copyfile(TINYSHAKESPEARE, data / "input.txt")
    subprocess.run([sys.executable, "prepare.py"], cwd=data, check=True, capture_output=True)
    return copy


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nanogpt", type=Path, required=True, help="a checkout of karpathy/nanoGPT")
    parser.add_argument("--pairs", type=int, default=3, help="alternating pairs of training runs")
    parser.add_argument("--sample-pairs", type=int, default=5, help="alternating pairs of sampling runs")
    parser.add_argument("--max-iters", type=int, default=2000)
    parser.add_argument("--threads", type=int, default=1,
                        help="OMP_NUM_THREADS of both programs (on a shared CPU, threads that wait on each other thrash)")
    parser.add_argument("--eval-interval", type=int, default=None,
                        help="iterations between evaluations (default: 250 for --config cpu, --max-iters for shakespeare)")
    parser.add_argument("--config", choices=sorted(CONFIGS), default="cpu",
                        help="nanoGPT's README CPU run, or its Shakespeare (GPU) config on the CPU")
    parser.add_argument("--as-typed", action="store_true",
                        help="lmzoo's model=gpt as it comes with nanoGPT's sizes, not nanoGPT's model")
    parser.add_argument("--lmzoo", nargs="*", default=[], metavar="KEY=VALUE", help="more overrides of lmzoo's command")
    parser.add_argument("--batch-size", type=int, help="both programs' batch size, in place of the config's")
    parser.add_argument("--start-with", choices=["nanoGPT", "lmzoo"], default="nanoGPT",
                        help="the program of the first pair's first run (pairs of several calls alternate too)")
    args = parser.parse_args()
    nanogpt_args, lmzoo_args, context, default_interval = CONFIGS[args.config]
    if args.batch_size:
        nanogpt_args = [*nanogpt_args, f"--batch_size={args.batch_size}"]
        lmzoo_args = [*lmzoo_args, f"data.batch_size={args.batch_size}"]
    if args.as_typed:
        lmzoo_args = [arg for arg in lmzoo_args if not arg.startswith(NANOGPT_MODEL_CHOICES)]
    lmzoo_args = [*lmzoo_args, *args.lmzoo]
    if args.pairs < 1 or args.sample_pairs < 0:
        sys.exit("error: --pairs must be >= 1 and --sample-pairs >= 0")

    with tempfile.TemporaryDirectory(prefix="lmzoo-vs-nanogpt-") as tmp:
        work = Path(tmp)
        nanogpt = set_up_nanogpt(args.nanogpt.expanduser().resolve(), work)
        # This checkout's lmzoo, whichever one the environment has installed.
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")]),
               "OMP_NUM_THREADS": str(args.threads)}
        # Both programs' own modules byte-compiled beforehand, as an installed package's are (pip compiles them) and
        # as a second run of a checkout finds them: where PYTHONDONTWRITEBYTECODE is set, each run would compile
        # them again, 0.1 s of lmzoo's sampling and a few ms of nanoGPT's.
        subprocess.run([sys.executable, "-m", "compileall", "-q", str(REPO / "src" / "lmzoo"), str(nanogpt)],
                       check=True, capture_output=True)
        lmzoo_data = [f"data.path={TINYSHAKESPEARE}", f"paths.data_dir={work / 'lmzoo-data'}"]
        subprocess.run([sys.executable, "-m", "lmzoo.prepare", "data=shakespeare_char", *lmzoo_data], cwd=work,
                       env=env, check=True, capture_output=True)
        iters = args.max_iters
        interval = args.eval_interval or default_interval or iters
        commands = {
            "nanoGPT": ([sys.executable, "train.py", "config/train_shakespeare_char.py", *nanogpt_args,
                         f"--max_iters={iters}", f"--lr_decay_iters={iters}", f"--eval_interval={interval}",
                         f"--out_dir={work / 'out-nanogpt'}"],
                        nanogpt),
            "lmzoo": ([sys.executable, "-m", "lmzoo.train", *lmzoo_args, *lmzoo_data,
                       f"trainer.max_steps={iters}", f"optim.warmup_steps={min(100, iters)}",
                       f"trainer.val_check_interval={interval}", f"hydra.run.dir={work / 'lmzoo-run'}"], work),
        }
        samplers = {
            "nanoGPT": ([sys.executable, "sample.py", f"--out_dir={work / 'out-nanogpt'}", "--device=cpu",
                         "--compile=False", "--num_samples=1", *(f"--{k}={v}" for k, v in SAMPLE.items())], nanogpt),
            "lmzoo": ([sys.executable, "-m", "lmzoo.generate", f"ckpt={work / 'lmzoo-run/checkpoints/last.ckpt'}",
                       "device=cpu", "num_samples=1", *(f"{k}={v}" for k, v in SAMPLE.items())], work),
        }
        print(f"CPU: {cpu_description()}")
        print(f"lmzoo: {' '.join(lmzoo_args)}")
        print(f"config {args.config}; load average at start: {os.getloadavg()[0]:.1f}; {args.threads} thread(s) each; "
              f"{iters} iterations")
        train = measure(commands, args.pairs, env, "train", val_loss, args.start_with)
        same_text = None if args.as_typed else same_text_losses(
            work / "out-nanogpt" / "ckpt.pt", nanogpt / "data" / "shakespeare_char",
            work / "lmzoo-run" / "checkpoints" / "last.ckpt", work / "lmzoo-data", context)
        sample = measure(samplers, args.sample_pairs, env, "sample", None, args.start_with) if args.sample_pairs else None
        print(f"load average at end: {os.getloadavg()[0]:.1f}")
        report("train", train)
        if same_text:
            print("val loss of the final checkpoints on every token of the same validation text: "
                  + ", ".join(f"{name} {loss:.4f}" for name, loss in same_text.items()))
        if sample:
            report("sample", sample)


def measure(commands: dict, pairs: int, env: dict, what: str, loss_of, start_with: str = "nanoGPT") -> list[dict]:
    """Runs the two commands in alternating order, pair by pair, `start_with` first; each pair's wall and CPU
    times and losses."""
    rows = []
    first = ["nanoGPT", "lmzoo"] if start_with == "nanoGPT" else ["lmzoo", "nanoGPT"]
    for pair in range(pairs):
        order = first if pair % 2 == 0 else first[::-1]
        row = {}
        for name in order:
            command, cwd = commands[name]
            if name == "lmzoo" and what == "train":
                shutil.rmtree(cwd / "lmzoo-run", ignore_errors=True)
            wall, user, output = timed(command, cwd, env)
            row[name] = {"wall": wall, "user": user, "loss": loss_of(name, output, cwd) if loss_of else None}
            loss = f", val loss {row[name]['loss']:.4f}" if loss_of else ""
            print(f"{what} pair {pair + 1} {name:8s} wall {wall:7.2f} s, user CPU {user:7.2f} s{loss}", flush=True)
            if name == "lmzoo" and what == "train":
                # What trainer.precision=auto and compile=auto chose, and why (the progress bar may precede a line).
                for line in re.findall(r"\b(?:precision|compile): [^\r\n]*", output):
                    print(f"  {line}", flush=True)
        rows.append(row)
    return rows


def val_loss(name: str, output: str, cwd: Path) -> float:
    """The validation loss at the last evaluation: nanoGPT prints it; lmzoo writes it in its run summary."""
    if name == "nanoGPT":
        return float(re.findall(r"step \d+: train loss [\d.]+, val loss ([\d.]+)", output)[-1])
    return json.loads((cwd / "lmzoo-run" / "summary.json").read_text())["best_val_loss"]


def cpu_description() -> str:
    """The CPU's model name and whether it has the native bf16 units that decide lmzoo's precision=auto."""
    sys.path.insert(0, str(REPO / "src"))
    from lmzoo.training.perf import cpu_flags, cpu_name

    flags = cpu_flags()
    return f"{cpu_name()}; " + ", ".join(f"{flag} {'yes' if flag in flags else 'no'}" for flag in ("amx_bf16", "avx512_bf16"))


def same_text_losses(nanogpt_ckpt: Path, nanogpt_data: Path, lmzoo_ckpt: Path, lmzoo_data: Path, context: int) -> dict:
    """nanoGPT's and lmzoo's final checkpoints evaluated by lmzoo on every token of nanoGPT's val.bin."""
    import pickle

    import numpy as np
    import torch

    sys.path.insert(0, str(REPO / "src"))
    from lmzoo.checkpoints.load import load_model
    from lmzoo.inference.evaluation import split_loss

    tokens = np.fromfile(nanogpt_data / "val.bin", dtype=np.uint16)
    (ours,) = lmzoo_data.glob("*/*/val.bin")
    # nanoGPT holds out the last 10% as validation; lmzoo the same 10%, its first half validation, its second test.
    held_out = np.concatenate([np.fromfile(ours.with_name(split), dtype=np.uint16) for split in ("val.bin", "test.bin")])
    if not np.array_equal(tokens, held_out):
        sys.exit("error: nanoGPT's validation tokens differ from lmzoo's held-out ones; the comparison would not be on "
                 "the same text")
    lmzoo, tokenizer, _ = load_model(lmzoo_ckpt)
    characters = pickle.loads((nanogpt_data / "meta.pkl").read_bytes())["itos"]
    if tokenizer.encode("".join(characters[i] for i in range(len(characters)))) != list(range(len(characters))):
        sys.exit("error: nanoGPT's and lmzoo's character ids differ")
    nanogpt, _, _ = load_model(lmzoo_ckpt)
    nanogpt.load_state_dict(torch.load(nanogpt_ckpt, map_location="cpu", weights_only=False)["model"])
    return {name: split_loss(model.eval(), tokens, context)[0] for name, model in (("nanoGPT", nanogpt), ("lmzoo", lmzoo))}


def report(what: str, rows: list[dict]) -> None:
    wall = [row["lmzoo"]["wall"] / row["nanoGPT"]["wall"] for row in rows]
    user = [row["lmzoo"]["user"] / row["nanoGPT"]["user"] for row in rows]
    print(f"\n{what}: lmzoo / nanoGPT, median of {len(rows)} pairs: wall {statistics.median(wall):.3f} "
          f"(pairs {' '.join(f'{r:.3f}' for r in wall)}), user CPU {statistics.median(user):.3f} "
          f"(pairs {' '.join(f'{r:.3f}' for r in user)})")
    for name in ("nanoGPT", "lmzoo"):
        walls = [row[name]["wall"] for row in rows]
        losses = [row[name]["loss"] for row in rows if row[name]["loss"] is not None]
        loss = f", val loss {statistics.median(losses):.4f}" if losses else ""
        print(f"  {name:8s} median wall {statistics.median(walls):.2f} s{loss}")


if __name__ == "__main__":
    main()
