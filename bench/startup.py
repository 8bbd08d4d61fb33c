"""Start-up: how much longer than `import torch` lmzoo's commands take, whole processes.

    python bench/startup.py                     # --rounds 5 --threads 1

Six commands, in rotating order in each round:

- **torch**: `python -c "import torch"`, the floor every PyTorch program pays;
- **torch, gc off**: the same with Python's cyclic garbage collector off, as lmzoo's commands import torch
  (lmzoo.cli.run_command): the part of their lead that is torch's own import;
- **optimizer**: `import torch` and the construction of a `torch.optim.AdamW`, which imports `torch._dynamo`
  (every PyTorch optimizer does, on its first `add_param_group`): the floor of any PyTorch training program;
- **train**: `python -m lmzoo.train trainer=debug trainer.max_steps=1 trainer.val_check_interval=1
  optim.warmup_steps=1 sample_tokens=0` on tinyshakespeare (prepared beforehand) with one callback added
  (`bench/first_step.py`) that notes the wall-clock time when the first training step starts. Two times:
  **first step**, from launching the process to that moment (the issue's measure), and **whole**, the process
  to its exit (the first step, one validation of 2 batches, the checkpoints and the exit);
- **generate**: `python -m lmzoo.generate` with its defaults (500 new tokens) on that run's checkpoint (the
  default gpt_rope, 0.8M parameters);
- **generate 1**: the same with `max_new_tokens=1`: the start-up and the checkpoint without the sampling.

Every command may write Python's bytecode cache, as on a user's machine, and is run once before the timed
rounds. Printed: each command's median wall time, and the medians of the per-round differences to `import torch`.
"""

import argparse
import os
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


def wall(command: list[str], cwd: Path, env: dict,
         first_step_file: Path | None = None) -> tuple[float, float, float | None]:
    """Seconds from launch to exit, the CPU seconds the process used (user and system), and the seconds from
    launch to the first training step when `first_step_file` is given."""
    if first_step_file is not None:
        first_step_file.unlink(missing_ok=True)
    launched = time.time()
    start = time.perf_counter()
    used_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    finished = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True)
    used = resource.getrusage(resource.RUSAGE_CHILDREN)
    seconds = time.perf_counter() - start
    cpu = used.ru_utime + used.ru_stime - used_before.ru_utime - used_before.ru_stime
    if finished.returncode != 0:
        sys.exit(f"failed: {' '.join(command)}\n{finished.stderr[-3000:]}")
    if first_step_file is None:
        return seconds, cpu, None
    return seconds, cpu, float(first_step_file.read_text()) - launched


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1, help="OMP_NUM_THREADS of every command")
    args = parser.parse_args()
    # A user's Python caches compiled modules; this sandbox's PYTHONDONTWRITEBYTECODE=1 would recompile lmzoo's and
    # some dependencies' sources (about 0.1 s) in every command.
    env = {**{key: value for key, value in os.environ.items() if key != "PYTHONDONTWRITEBYTECODE"},
           "PYTHONPATH": os.pathsep.join([str(REPO / "src"), str(REPO / "bench"), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": str(args.threads)}
    with tempfile.TemporaryDirectory(prefix="lmzoo-startup-") as tmp:
        work = Path(tmp)
        data = [f"data.path={TINYSHAKESPEARE}", f"paths.data_dir={work / 'data'}"]
        first_step_file = work / "first_step"
        # A run folder that holds a run is refused, so each timed run writes a new one (`again`); the first run's
        # (`run`) keeps the checkpoint that generate samples from.
        train, first_train = ([sys.executable, "-m", "lmzoo.train", "trainer=debug", "trainer.max_steps=1",
                               "trainer.val_check_interval=1", "optim.warmup_steps=1", "sample_tokens=0", *data,
                               f"hydra.run.dir={work / folder}",
                               "+callbacks.first_step._target_=first_step.FirstStepClock",
                               f"+callbacks.first_step.path={first_step_file}"] for folder in ("again", "run"))
        generate = [sys.executable, "-m", "lmzoo.generate", f"ckpt={work / 'run/checkpoints/last.ckpt'}"]
        commands = {
            "torch": [sys.executable, "-c", "import torch"],
            "torch, gc off": [sys.executable, "-c", "import gc; gc.disable(); import torch"],
            "optimizer": [sys.executable, "-c", "import torch; torch.optim.AdamW([torch.zeros(1, requires_grad=True)])"],
            "train": train,
            "generate": generate,
            "generate 1": [*generate, "max_new_tokens=1"],
        }
        # The data prepared, a checkpoint written, the CPU's peak FLOP/s and every module's bytecode cached before
        # anything is timed.
        wall(first_train, work, env, first_step_file)
        for command in (commands["generate 1"], commands["optimizer"]):
            wall(command, work, env)
        print(f"load average at start: {os.getloadavg()[0]:.1f}; {args.threads} thread(s)")
        times = {name: [] for name in [*commands, "first step"]}
        cpu_times = {name: [] for name in commands}
        names = list(commands)
        for round_ in range(args.rounds):
            for name in names[round_ % len(names):] + names[: round_ % len(names)]:
                shutil.rmtree(work / "again", ignore_errors=True)
                seconds, cpu, first_step = wall(commands[name], work, env, first_step_file if name == "train" else None)
                times[name].append(seconds)
                cpu_times[name].append(cpu)
                if first_step is not None:
                    times["first step"].append(first_step)
            print("round", round_ + 1, " ".join(f"{name} {times[name][-1]:.2f} s" for name in times), flush=True)
        print(f"load average at end: {os.getloadavg()[0]:.1f}")
        for name in times:
            print(f"{name:13s} median {statistics.median(times[name]):.2f} s")
        for name in ("torch, gc off", "optimizer", "first step", "train", "generate", "generate 1"):
            extra = [t - floor for t, floor in zip(times[name], times["torch"])]
            print(f"{name} - torch: median {statistics.median(extra):.2f} s "
                  f"(rounds {' '.join(f'{e:.2f}' for e in extra)})")
        # CPU time is what the programs themselves did; wall time also holds what a shared VM's neighbours took.
        for name in ("torch, gc off", "optimizer", "train", "generate", "generate 1"):
            extra = [t - floor for t, floor in zip(cpu_times[name], cpu_times["torch"])]
            print(f"{name} - torch, CPU time: median {statistics.median(extra):.2f} s "
                  f"(rounds {' '.join(f'{e:.2f}' for e in extra)})")


if __name__ == "__main__":
    main()
