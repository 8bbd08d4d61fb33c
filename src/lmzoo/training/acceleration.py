"""What `trainer.precision=auto` and `compile=auto` choose, and why: each says its choice in one line.

Both decide from measurements of the run's own model on the machine it runs on, cached per machine (CPU or GPU,
threads, torch version) and model shape in lmzoo's cache folder (lmzoo.training.perf.cache_dir), as the MFU's
peak is:

- bf16 autocast pays on CUDA GPUs with bf16. On a CPU it pays only with native bf16 matrix units (`amx_bf16`,
  `avx512_bf16`), and there only for some shapes: a `gpt_rope` training step at width 128 was 0.75x as fast as
  fp32 on an Intel Xeon with AMX and 1.12x on an AMD EPYC Zen 4 with AVX512-BF16, at width 384 1.89x and 1.86x
  (bench/README.md). So on such a CPU `auto` times a few forward-backward steps of the model in both (seconds),
  and picks bf16 where it is faster by BF16_MARGIN. A CPU without those units emulates bf16, slowly.
- torch.compile pays once the run is long enough: compiling costs from seconds (with PyTorch's compile cache)
  to minutes, and a compiled step was measured from 4% slower to 1.9x faster than an eager one, depending on
  the shape. A run that compiles records what compiling cost it and its compiled pace; `auto` in a later run
  of the model weighs those against the time left.
"""

import copy
import dataclasses
import json
import math
import statistics
import sys
import time

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import Timer

from lmzoo.errors import UserError
from lmzoo.machine import instruction_set_held
from lmzoo.training.perf import cache_path, cached, cpu_flags, cpu_name, machine, read_cache, write_cache

# CPU flags (Linux's names) of units that multiply bf16 matrices natively.
BF16_CPU_UNITS = ("amx_bf16", "avx512_bf16")
# How many times faster than fp32 a bf16 autocast step must be for auto to choose it: its rounding is a cost too.
BF16_MARGIN = 1.1
# Forward-backward steps timed in each precision after a warm-up step each, alternating, on up to PRECISION_TOKENS
# tokens of the run's batch (whole sequences: at least one); the timing stops after the first timed pair once it
# has taken PRECISION_SECONDS.
PRECISION_STEPS = 3
PRECISION_SECONDS = 10.0
PRECISION_TOKENS = 2048
PRECISION_CACHE = "precision.json"
# Steps timed eagerly, after a first warm-up step, before compile=auto decides; and compiled steps timed after
# the first compiled one, for the record of what compiling gave.
PACE_STEPS = 5
COMPILE_CACHE = "compile.json"
# What compile=auto assumes before any run on this machine has measured it: compiling costs ASSUMED_COMPILE_SECONDS
# (the training and validation graphs, without PyTorch's compile cache: 80 s for a 2-layer width-32 model's first
# step and 440 s for the default gpt_rope's 100-step run on a busy 2-core AMD EPYC) and saves ASSUMED_COMPILE_SAVES
# of a step (10% to 45% on the shapes measured, -4% on one).
ASSUMED_COMPILE_SECONDS = 300.0
ASSUMED_COMPILE_SAVES = 0.1


def device_type(accelerator) -> str:
    """The kind of device a trainer.accelerator setting trains on: cuda, cpu, mps, ..."""
    if accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available()):
        return "cuda"
    if accelerator == "auto":
        return "mps" if torch.backends.mps.is_available() else "cpu"
    return str(accelerator)


def choose_precision(asked, device: str, model: torch.nn.Module, batch_size: int, block_size: int) -> tuple[str, str]:
    """The precision a run trains in, and why: `asked` (trainer.precision) unless it is auto. On a CPU with native
    bf16 units, auto times forward and backward passes of `model` on batches of up to `batch_size` sequences of
    `block_size` tokens (PRECISION_TOKENS in all)."""
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
    if instruction_set_held():
        return "32-true", ("auto: repro=true holds the kernels at AVX2, which computes bf16 without the CPU's bf16 "
                           "units, and every CPU would not choose alike")
    units = [unit for unit in BF16_CPU_UNITS if unit in cpu_flags()]
    if not units:
        return "32-true", (f"auto: this CPU ({cpu_name()}) has no native bf16 matrix unit ({', '.join(BF16_CPU_UNITS)}), "
                           "so bf16 autocast would be slower than fp32")
    sequences = min(batch_size, max(1, PRECISION_TOKENS // block_size))
    key = f"{machine()}|{shape_of(model)}|batch {sequences} x {block_size}"
    seconds, known = cached(PRECISION_CACHE, key, lambda: precision_seconds(model, sequences, block_size))
    ratio = seconds["fp32"] / seconds["bf16"]
    where = f"{'cached' if known else 'measured now'} in {cache_path(PRECISION_CACHE)}"
    measured = (f"this CPU has {units[0]}, and a forward and backward pass of this model on a batch of {sequences} x "
                f"{block_size} tokens took {seconds['fp32']:.3g} s in fp32 and {seconds['bf16']:.3g} s in bf16 "
                f"autocast, {ratio:.2f}x as fast ({where})")
    if ratio >= BF16_MARGIN:
        return "bf16-mixed", f"auto: {measured}"
    return "32-true", f"auto: {measured}, below the {BF16_MARGIN:g}x bf16 must gain"


def shape_of(model: torch.nn.Module) -> str:
    """The model's class and settings: what its speed depends on, as a cache key."""
    config = getattr(model, "config", None)
    settings = config.as_dict() if dataclasses.is_dataclass(config) else {}
    return f"{type(model).__name__} {json.dumps(settings, sort_keys=True, default=str)}"


def precision_seconds(model: torch.nn.Module, batch_size: int, block_size: int) -> dict[str, float]:
    """The fastest forward-backward step of a copy of `model` in fp32 and in bf16 autocast on random tokens,
    alternating after a warm-up step of each. The copy leaves the model's weights, buffers (BatchNorm's running
    statistics), gradients and the random number generator as they were."""
    probe = copy.deepcopy(model).train()
    vocab = probe.config.vocab_size
    fastest = {"fp32": math.inf, "bf16": math.inf}
    with torch.random.fork_rng(devices=[]):
        tokens = torch.randint(vocab, (batch_size, block_size))
        started = time.perf_counter()
        for step in range(1 + PRECISION_STEPS):
            for name in fastest:
                step_started = time.perf_counter()
                forward_backward(probe, tokens, bf16=name == "bf16")
                if step:
                    fastest[name] = min(fastest[name], time.perf_counter() - step_started)
            if step and time.perf_counter() - started > PRECISION_SECONDS:
                break
    return fastest


def forward_backward(model: torch.nn.Module, tokens: torch.Tensor, bf16: bool) -> None:
    """One training step's forward and backward, in bf16 autocast as Lightning's bf16-mixed runs it or in fp32."""
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        output = model(tokens)
        loss = F.cross_entropy(output.logits.flatten(0, 1).float(), tokens.flatten())
        if output.aux_loss is not None:
            loss = loss + output.aux_loss
    loss.backward()
    model.zero_grad(set_to_none=True)


def check_compile(value) -> None:
    if value not in (True, False, "auto"):
        raise UserError(f"compile must be true, false or auto (compile when the run is long enough to repay it), "
                        f"got {value!r}")


@dataclasses.dataclass
class CompileRecord:
    """What compiling a model cost on a machine, and what it gave: kept in COMPILE_CACHE per machine, model,
    precision and batch shape. `first_seconds` is its first compile here (the longest: PyTorch's compile cache,
    on disk, holds the graphs after it), `seconds` its latest; the steps' seconds are None until measured."""

    first_seconds: float
    seconds: float
    compiled_step: float | None = None
    eager_step: float | None = None

    @property
    def saves(self) -> float | None:
        """The share of an eager step a compiled one saves (negative when slower); None until both were measured."""
        return 1 - self.compiled_step / self.eager_step if self.compiled_step and self.eager_step else None


def compile_records() -> dict[str, CompileRecord]:
    """This machine's compile records, by the rest of their key (model, precision, batch)."""
    prefix = machine() + "|"
    fields = {field.name for field in dataclasses.fields(CompileRecord)}
    return {key[len(prefix):]: CompileRecord(**{k: v for k, v in value.items() if k in fields})
            for key, value in read_cache(COMPILE_CACHE).items()
            if key.startswith(prefix) and isinstance(value, dict) and "seconds" in value}


def compile_estimate(shape: str) -> tuple[float, float, str]:
    """The seconds compiling `shape` (model, precision, batch) will take here, the share of a step it will save,
    and where both come from: its own record, the longest first compile measured here for another model, or
    the assumption."""
    records = compile_records()
    record = records.get(shape)
    if record and record.saves is not None:
        return record.seconds, record.saves, (f"measured here for this model: compiling it {record.seconds:.0f} s "
                                              f"(its first compile {record.first_seconds:.0f} s), a compiled step "
                                              f"{1 - record.saves:.2f}x an eager one")
    seconds = record.seconds if record else max((r.first_seconds for r in records.values()), default=None)
    if seconds is None:
        return ASSUMED_COMPILE_SECONDS, ASSUMED_COMPILE_SAVES, (
            f"not measured on this machine yet: compiling taken as {ASSUMED_COMPILE_SECONDS:.0f} s without PyTorch's "
            f"compile cache, saving {ASSUMED_COMPILE_SAVES:.0%} of a step")
    source = "this model's compile" if record else "the longest first compile of another model"
    return seconds, ASSUMED_COMPILE_SAVES, (f"compiling taken as {seconds:.0f} s ({source} measured here), saving "
                                            f"{ASSUMED_COMPILE_SAVES:.0%} of a step (not measured for this model yet)")


class CompileWhenItPays(L.Callback):
    """compile=auto: times PACE_STEPS eager steps after the first, then compiles the model for the rest of the run
    when the time left at that pace, times the share a compiled step saves, exceeds what compiling costs; both
    as measured on this machine for this model (compile_estimate). Says its choice in one line.

    A run that compiles (auto or compile=true) records what compiling cost it (the first compiled training step's
    and validation batch's time beyond the compiled pace) and its compiled pace, for later runs to decide by.
    The choice is kept in checkpoints, so a resumed run compiles from its start exactly when the run it
    continues had compiled.
    """

    def __init__(self, compile="auto"):
        self.auto = compile == "auto"
        # None until decided; then whether the model was compiled. compile=true compiled it before training.
        self.compiled: bool | None = True if compile is True else None
        self.pace_started = None
        self.eager_step: float | None = None
        # Seconds of the compiled training steps and of the first validation's batches after compiling, until
        # recorded; None when not recording.
        self.train_times: list[float] | None = [] if compile is True else None
        self.val_times: list[float] = []
        self.validated = False
        self.batch_started = 0.0
        # The model, precision and batch the records are kept under (CompileWhenItPays.shape).
        self.key = ""

    def state_dict(self) -> dict:
        return {"compiled": self.compiled if self.auto else None}

    def load_state_dict(self, state_dict: dict) -> None:
        if self.auto:
            self.compiled = state_dict.get("compiled")

    def on_train_start(self, trainer, pl_module):
        if self.auto and self.compiled is not None:
            if self.compiled:
                pl_module.model.compile()
            say(trainer, f"compile: {str(self.compiled).lower()} (auto: as the run this one resumes chose)")
            self.train_times = [] if self.compiled else None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.batch_started = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if self.train_times is not None:
            self.train_times.append(time.perf_counter() - self.batch_started)
            self.key = self.shape(trainer, pl_module, batch)
            if len(self.train_times) > PACE_STEPS and self.validated:
                self.record(trainer)
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
        seconds, saves, source = compile_estimate(self.shape(trainer, pl_module, batch))
        saved = saves * left
        # Every rank decides alike: their paces differ a little.
        self.compiled = trainer.strategy.reduce_boolean_decision(saved > seconds, all=True)
        if self.compiled:
            pl_module.model.compile()
            self.eager_step, self.train_times = per_step, []
        say(trainer, f"compile: {str(self.compiled).lower()} (auto: {left:.0f} s of training left at {per_step:.3g} s "
                     f"a step; {source}; saving {saved:.0f} s here)")

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0):
        self.batch_started = time.perf_counter()

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        if self.train_times is not None and not self.validated and not trainer.sanity_checking:
            self.val_times.append(time.perf_counter() - self.batch_started)

    def on_validation_end(self, trainer, pl_module):
        # The first validation after compiling compiles its own graph, on its first batch.
        if self.train_times is not None and not trainer.sanity_checking:
            self.validated = True

    def shape(self, trainer, pl_module, batch) -> str:
        """The model, precision, batch and, on a GPU, which one: the rest of a compile record's key."""
        device = f"|{torch.cuda.get_device_name(pl_module.device)}" if pl_module.device.type == "cuda" else ""
        return (f"{shape_of(pl_module.model)}|{trainer.precision}|batch {' x '.join(map(str, batch[0].shape))}"
                f"{device}")

    def on_train_end(self, trainer, pl_module):
        if self.train_times is not None and len(self.train_times) > 1:
            self.record(trainer)

    def record(self, trainer) -> None:
        """Record what compiling cost (the first compiled training step's time beyond the compiled pace, and the
        first validation batch's beyond the others', when one ran) and the compiled pace; once a run."""
        steps, val = self.train_times, self.val_times
        pace = statistics.median(steps[1:])
        seconds = max(0.0, steps[0] - pace)
        if self.validated and len(val) > 1:
            seconds += max(0.0, val[0] - statistics.median(val[1:]))
        self.train_times = None
        if not trainer.is_global_zero:
            return
        known = compile_records().get(self.key)
        record = CompileRecord(first_seconds=known.first_seconds if known else seconds, seconds=seconds,
                               compiled_step=pace, eager_step=self.eager_step or (known and known.eager_step))
        write_cache(COMPILE_CACHE, f"{machine()}|{self.key}", dataclasses.asdict(record))


def say(trainer: L.Trainer, line: str) -> None:
    if trainer.is_global_zero:
        print(line, file=sys.stderr)
