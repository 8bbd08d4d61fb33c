"""Training throughput through lmzoo's Lightning Trainer versus a bare PyTorch loop.

Both runs build the same model from the same config and seed (lmzoo.training.run.build), draw the
same batches from the datamodule's train_dataloader, and use the model's configure_optimizers()
(AdamW + per-step warmup-cosine LambdaLR) with gradient-norm clipping at 1.0. The Lightning run
is trainer.fit with the Trainer, callbacks, logger and progress bar exactly as lmzoo's config
builds them, except that validation is moved past the last step; one extra callback records a
timestamp per step.
The script checks that the two runs produce the same losses, so they did the same work.

Measured: after WARMUP steps, the wall time of each window of log_every_n_steps (10) whole
steps, from the end of one step to the end of the step 10 later: data loading, forward,
backward, clipping, optimizer and scheduler, hooks and logging (each window holds exactly one
logging step), but not setup or teardown. A run's tokens/s is taken over its median window, so
that bursts of load from other processes on a shared machine do not count. Lightning and bare
runs alternate in REPEATS adjacent pairs (order flipped every pair); the table shows median
tokens/s and the median of the per-pair ratios. The bar: that ratio >= 0.97; exits 1 if not met.

The same windows are also timed in CPU time of the whole process (every thread: the logger's
writer thread counts as overhead too), whose ratio a virtual machine's neighbours disturb far less
than wall time: with one thread per run it is the wall-time ratio of an idle machine.

    /tmp/venv/bin/python bench/overhead.py [hydra overrides applied to both runs ...]
"""

import statistics
import sys
import tempfile
import time
from pathlib import Path

import lightning as L
import torch
import torch.nn.functional as F
from common import train_config

from lmzoo.training.run import build

BAR = 0.97
REPEATS = 5
# (batch size, timed steps, warm-up steps): nanoGPT's CPU batch, then a larger one.
SIZES = [(12, 150, 30), (64, 60, 10)]
# What now() reads, in its order.
CLOCKS = ("wall", "CPU")


def now() -> tuple[float, float]:
    """Wall time and the process's CPU time (CLOCKS)."""
    return time.perf_counter(), time.process_time()


class StepClock(L.Callback):
    """Records the wall and CPU time and the loss at the end of every training step."""

    def __init__(self):
        self.times, self.losses = [], []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.times.append(now())
        self.losses.append(outputs["loss"])


def lightning_run(cfg):
    datamodule, lit, trainer = build(cfg)
    clock = StepClock()
    trainer.callbacks.append(clock)
    trainer.fit(lit, datamodule=datamodule)
    return clock.times, clock.losses


def bare_run(cfg):
    datamodule, lit, trainer = build(cfg)
    # configure_optimizers reads the Trainer's precision and clipping.
    lit.trainer = trainer
    model = lit.model
    optim = lit.configure_optimizers()
    optimizer, scheduler = optim["optimizer"], optim["lr_scheduler"]["scheduler"]
    model.train()
    times, losses = [], []
    for _, batch in zip(range(cfg.trainer.max_steps), datamodule.train_dataloader()):
        x, y = batch
        loss = F.cross_entropy(model(x).logits.flatten(0, 1), y.flatten())
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.trainer.gradient_clip_val)
        optimizer.step()
        scheduler.step()
        times.append(now())
        losses.append(loss.detach())
    return times, losses


def measure(workdir: Path, batch_size: int, steps: int, warmup: int, overrides: list[str]) -> dict:
    total = warmup + steps
    # The schedule's warmup fits in the run (lmzoo refuses a run that would end still warming up).
    cfg = train_config(workdir, ["model=gpt", f"data.batch_size={batch_size}", f"trainer.max_steps={total}",
                                 f"trainer.val_check_interval={total + 1}", f"optim.warmup_steps={min(100, total)}",
                                 *overrides])
    window = cfg.trainer.log_every_n_steps
    tokens = window * batch_size * cfg.block_size
    # Tokens/s of each run, by each of CLOCKS.
    rates = [{"lightning": [], "bare": []} for _ in CLOCKS]
    for repeat in range(REPEATS):
        runs = [("lightning", lightning_run), ("bare", bare_run)]
        losses = {}
        for name, run in runs if repeat % 2 == 0 else runs[::-1]:
            times, losses[name] = run(cfg)
            for clock, into in enumerate(rates):
                windows = [times[end][clock] - times[end - window][clock]
                           for end in range(warmup - 1 + window, total, window)]
                into[name].append(tokens / statistics.median(windows))
        if not torch.allclose(torch.stack(losses["lightning"]), torch.stack(losses["bare"]), atol=1e-5):
            raise RuntimeError("the Lightning and bare runs computed different losses")
    return {name: statistics.median(values) for name, values in rates[0].items()} | {
        f"{clock} ratios": [lightning / bare for lightning, bare in zip(into["lightning"], into["bare"])]
        for clock, into in zip(CLOCKS, rates)}


def main(overrides: list[str]) -> int:
    passed = True
    with tempfile.TemporaryDirectory(prefix="lmzoo-overhead-") as workdir:
        for batch_size, steps, warmup in SIZES:
            result = measure(Path(workdir), batch_size, steps, warmup, overrides)
            # Each size's row as soon as it is measured.
            print(f"\ntorch {torch.__version__}, lightning {L.__version__}, {torch.get_num_threads()} threads; "
                  f"overrides: {' '.join(overrides) or 'none'}")
            print(f"{'batch':>5} {'steps':>5} {'bare tok/s':>11} {'lightning tok/s':>16} {'ratio':>6}  per-pair ratios")
            ratio = statistics.median(result["wall ratios"])
            pairs = " ".join(f"{r:.3f}" for r in result["wall ratios"])
            print(f"{batch_size:>5} {steps:>5} {result['bare']:>11.0f} {result['lightning']:>16.0f} {ratio:>6.3f}  {pairs}",
                  flush=True)
            cpu_pairs = " ".join(f"{r:.3f}" for r in result["CPU ratios"])
            print(f"      CPU time: ratio {statistics.median(result['CPU ratios']):.3f}  {cpu_pairs}", flush=True)
            passed &= ratio >= BAR
    print(f"{'PASS' if passed else 'FAIL'}  lightning >= {BAR} x bare")
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
