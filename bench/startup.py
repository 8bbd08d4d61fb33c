"""Start-up: how much longer than `import torch` lmzoo's commands take, whole processes.

    python bench/startup.py                     # --rounds 5 --threads 1

Three commands, in rotating order in each round:

- **torch**: `python -c "import torch"`, the floor every PyTorch program pays;
- **train**: `python -m lmzoo.train trainer=debug trainer.max_steps=1 trainer.val_check_interval=1
  optim.warmup_steps=1 sample_tokens=0` on tinyshakespeare (prepared beforehand): start-up, the first step, one validation of 2 batches, the checkpoints
  and the exit, so an upper bound on the time to the first step;
- **generate**: `python -m lmzoo.generate` with its defaults (500 new tokens) on that run's checkpoint (the
  default gpt_rope, 0.8M parameters).

Printed: each command's median wall time, and the medians of the per-round differences train - torch and
generate - torch.
"""

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TINYSHAKESPEARE = REPO.parent / "shared" / "data" / "tinyshakespeare.txt"


def wall(command: list[str], cwd: Path, env: dict) -> float:
    start = time.perf_counter()
    finished = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if finished.returncode != 0:
        sys.exit(f"failed: {' '.join(command)}\n{finished.stderr[-3000:]}")
    return seconds


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1, help="OMP_NUM_THREADS of every command")
    args = parser.parse_args()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": str(args.threads)}
    with tempfile.TemporaryDirectory(prefix="lmzoo-startup-") as tmp:
        work = Path(tmp)
        data = [f"data.path={TINYSHAKESPEARE}", f"paths.data_dir={work / 'data'}"]
        train = [sys.executable, "-m", "lmzoo.train", "trainer=debug", "trainer.max_steps=1",
                 "trainer.val_check_interval=1", "optim.warmup_steps=1", "sample_tokens=0", *data, f"hydra.run.dir={work / 'run'}"]
        commands = {
            "torch": [sys.executable, "-c", "import torch"],
            "train": train,
            "generate": [sys.executable, "-m", "lmzoo.generate", f"ckpt={work / 'run/checkpoints/last.ckpt'}"],
        }
        # The data prepared and a checkpoint written before anything is timed.
        wall(train, work, env)
        print(f"load average at start: {os.getloadavg()[0]:.1f}; {args.threads} thread(s)")
        times = {name: [] for name in commands}
        names = list(commands)
        for round_ in range(args.rounds):
            for name in names[round_ % 3:] + names[: round_ % 3]:
                times[name].append(wall(commands[name], work, env))
            print("round", round_ + 1, " ".join(f"{name} {times[name][-1]:.2f} s" for name in names), flush=True)
        print(f"load average at end: {os.getloadavg()[0]:.1f}")
        for name in names:
            print(f"{name:9s} median {statistics.median(times[name]):.2f} s")
        for name in ("train", "generate"):
            extra = [t - floor for t, floor in zip(times[name], times["torch"])]
            print(f"{name} - torch: median {statistics.median(extra):.2f} s "
                  f"(rounds {' '.join(f'{e:.2f}' for e in extra)})")


if __name__ == "__main__":
    main()
