"""What `trainer.precision=auto` and `compile=auto` choose, and why: each says its choice in one line.

The rules come from measurements, not from guesses (bench/README.md has them, with the CPUs they ran on):

- bf16 autocast pays on CUDA GPUs with bf16, and on CPUs with native bf16 matrix units once the matrices are
  wide enough. On an Intel Xeon with AMX-BF16 (torch 2.13, 2 threads), a `gpt_rope` training step at width 128
  took 0.75x the speed of fp32, at width 384 1.89x, at GPT-2 124M's 768 1.73x. A CPU without them (AMD EPYC
  before Zen 4, older Intel parts) emulates bf16 and is slower in it than in fp32.
- torch.compile pays once the run is long enough: compiling the training and validation steps costs minutes
  on a small CPU, and the compiled steps were measured from 4% slower (GPT-2 124M, fp32) to 1.9x faster (width
  384, bf16) on the Xeon, and no faster for the default model on a shared AMD EPYC; COMPILE_SAVES is a low
  share of that.
"""

import math
import sys
import time

import lightning as L
import torch
from lightning.pytorch.callbacks import Timer

from lmzoo.errors import UserError
from lmzoo.training.perf import cpu_flags, cpu_name

# CPU flags (Linux's names) of units that multiply bf16 matrices natively.
BF16_CPU_UNITS = ("amx_bf16", "avx512_bf16")
# The narrowest model width at which bf16 autocast was measured faster than fp32 on a CPU (an AMX Xeon: width 128
# was slower, 384 faster; widths between were not measured).
BF16_CPU_MIN_WIDTH = 384
# Seconds torch.compile adds to a run (the training and validation graphs, inductor's C++ or Triton code) when
# PyTorch's compile cache does not hold them yet. On a 2-core AMD EPYC shared with other work: 80 s for a 2-layer
# width-32 model's first step, 440 s for the default gpt_rope's 100-step run (a run 2x its eager one's).
COMPILE_SECONDS = 300.0
# The share of a step's time a compiled step saves, taken low: 10% to 45% on the measured shapes, but -4% on one.
COMPILE_SAVES = 0.1
# Steps timed eagerly, after a first warm-up step, before compile=auto decides.
PACE_STEPS = 5


def device_type(accelerator) -> str:
    """The kind of device a trainer.accelerator setting trains on: cuda, cpu, mps, ..."""
    if accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available()):
        return "cuda"
    if accelerator == "auto":
        return "mps" if torch.backends.mps.is_available() else "cpu"
    return str(accelerator)


def choose_precision(asked, device: str, width: int | None) -> tuple[str, str]:
    """The precision a run trains in, and why: `asked` (trainer.precision) unless it is auto. `width` is the
    model's (n_embd, or the mlp's hidden), None for a model without one (bigram)."""
    if asked != "auto":
        if str(asked) in ("16-mixed", "16") and device == "cpu":
            return "bf16-mixed", (f"trainer.precision={asked}: fp16 autocast with a gradient scaler needs CUDA; on CPU "
                                  "it runs as bf16-mixed")
        return str(asked), f"trainer.precision={asked}"
    if device == "cuda":
        name = torch.cuda.get_device_name()
        if torch.cuda.is_bf16_supported():
            return "bf16-mixed", f"auto: the {name} computes in bf16"
        return "32-true", f"auto: the {name} has no bf16 (trainer.precision=16-mixed is its mixed precision)"
    if device != "cpu":
        return "32-true", f"auto: mixed precision is chosen for CUDA and CPUs only, not {device}"
    units = [unit for unit in BF16_CPU_UNITS if unit in cpu_flags()]
    if not units:
        return "32-true", (f"auto: this CPU ({cpu_name()}) has no native bf16 matrix unit ({', '.join(BF16_CPU_UNITS)}), "
                           "so bf16 autocast would be slower than fp32")
    if width is None or width < BF16_CPU_MIN_WIDTH:
        return "32-true", (f"auto: the model's width {width if width else '(none)'} is below {BF16_CPU_MIN_WIDTH}, where bf16 "
                           f"autocast was measured slower than fp32 even with {units[0]}")
    return "bf16-mixed", (f"auto: this CPU has {units[0]} and the model's width {width} is at least "
                          f"{BF16_CPU_MIN_WIDTH}, where bf16 autocast was measured faster than fp32")


def check_compile(value) -> None:
    if value not in (True, False, "auto"):
        raise UserError(f"compile must be true, false or auto (compile when the run is long enough to repay it), "
                        f"got {value!r}")


class CompileWhenItPays(L.Callback):
    """compile=auto: times PACE_STEPS eager steps after the first, then compiles the model for the rest of the run
    when the time left at that pace, times COMPILE_SAVES, exceeds COMPILE_SECONDS. Says its choice in one line.

    The choice is kept in checkpoints, so a resumed run compiles from its start exactly when the run it
    continues had compiled. Does nothing for compile=true (compiled before training) or false.
    """

    def __init__(self, compile="auto"):
        self.auto = compile == "auto"
        # None until decided; then whether the model was compiled.
        self.compiled: bool | None = None
        self.pace_started = None

    def state_dict(self) -> dict:
        return {"compiled": self.compiled}

    def load_state_dict(self, state_dict: dict) -> None:
        self.compiled = state_dict.get("compiled")

    def on_train_start(self, trainer, pl_module):
        if self.auto and self.compiled is not None:
            if self.compiled:
                pl_module.model.compile()
            say(trainer, f"compile: {str(self.compiled).lower()} (auto: as the run this one resumes chose)")

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if not self.auto or self.compiled is not None:
            return
        if self.pace_started is None:
            self.pace_started, self.pace_from = time.perf_counter(), trainer.global_step
            return
        if trainer.global_step - self.pace_from < PACE_STEPS:
            return
        per_step = (time.perf_counter() - self.pace_started) / (trainer.global_step - self.pace_from)
        left = (trainer.max_steps - trainer.global_step) * per_step if trainer.max_steps > 0 else math.inf
        timer = next((c for c in trainer.callbacks if isinstance(c, Timer)), None)
        if timer and timer.time_remaining("train") is not None:
            left = min(left, timer.time_remaining("train"))
        saved = COMPILE_SAVES * left
        # Every rank decides alike: their paces differ a little.
        self.compiled = trainer.strategy.reduce_boolean_decision(saved > COMPILE_SECONDS, all=True)
        if self.compiled:
            pl_module.model.compile()
        say(trainer, f"compile: {str(self.compiled).lower()} (auto: {left:.0f} s of training left at "
                     f"{per_step:.3g} s a step; compiling costs about {COMPILE_SECONDS:.0f} s without PyTorch's compile "
                     f"cache and saves about {COMPILE_SAVES:.0%} of a step, {saved:.0f} s here)")


def say(trainer: L.Trainer, line: str) -> None:
    if trainer.is_global_zero:
        print(line, file=sys.stderr)
