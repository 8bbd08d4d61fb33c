"""The zoo at equal compute, through the user's own commands: three sweeps and the scaling fit.

    python bench/zoo.py --out DIR [--flops 1.5e12] [--tokens 1e5] [--seeds 3] [--max-steps 3000]
                        [--sizes 8.2e3,2e4,5e4,1.2e5] [--budgets 2e11,4e11,8e11] [--layers 2]
                        [--parts zoo,optim,scaling] [--smoke]

Each part is one command a user would type (the script prints it, so a reader can repeat it), in its own
sweep folder under DIR, which then holds the sweep's comparison.md, report.md and val_loss.png:

- zoo: `python -m lmzoo.train -m model=PRESETS seed=1,2,3 budget.flops=F budget.max_steps=M`, every preset of
  conf/model/ at its default size; then the figure of val/loss against
  training FLOPs (`python -m lmzoo.plot DIR/zoo --x flops`) and a table of training throughput per active
  parameter (tokens/s x active parameters) relative to dense gpt_rope. bigram's 390 FLOPs a token would turn
  a transformer's budget into millions of its steps: budget.max_steps cuts them (the run says how much of the
  budget it spent); no other model comes near the ceiling.
- optim: `python -m lmzoo.train -m model=gpt_rope optim=adamw,muon seed=1,2,3 budget.tokens=T`.
- scaling: `python -m lmzoo.train -m model=gpt_rope model.n_layer=L model.target_params=SIZES budget.flops=BUDGETS`,
  then `python -m lmzoo.scaling DIR/scaling`. Two layers by default: at the preset's four, the smallest width
  gives 14k parameters, larger than the best size of the budgets a CPU affords in minutes.

Every part shares the settings in SHARED below (tinyshakespeare characters, batch 16 x 64 tokens, lr 3e-3).
Training runs on one thread: on a CPU shared with other work, threads fighting over cores make throughput
swing several-fold, while one thread per run keeps the models' ratios stable. Two parts can run side by side
as two invocations with different --parts and the same --out.
"""

import argparse
import os
import shlex
import subprocess
import sys
from pathlib import Path

from common import REPO, TINYSHAKESPEARE

from lmzoo.models.presets import preset_names
from lmzoo.reports.compare import Column, read_sweep, table

ZOO = preset_names()
PARTS = ["zoo", "optim", "scaling"]
# The bench's settings, shared by every part. Validating every 50 steps draws the loss curves; early
# stopping is kept out of the way so that every run spends its whole budget.
SHARED = {"data.batch_size": 16, "optim.lr": "3e-3", "optim.warmup_steps": 20, "trainer.val_check_interval": 50,
          "callbacks.early_stopping.patience": 1000, "trainer.enable_progress_bar": "false", "sample_tokens": 0}
# A run of a few minutes, checking that each part works, not measuring anything.
SMOKE = {"flops": 5e10, "tokens": 2e4, "seeds": 2, "max_steps": 50, "sizes": "1.2e4,2e4,5e4",
         "budgets": "2e10,4e10,8e10"}
SMOKE_SHARED = {"optim.warmup_steps": 2, "trainer.val_check_interval": 10}


def run(command: list[str], log: Path | None = None) -> int:
    """Print `command` as a user would type it, then run it on one thread; its output goes to `log` if given."""
    print("$ OMP_NUM_THREADS=1 " + shlex.join(["python", *command[1:]]), flush=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    if log is None:
        return subprocess.run(command, env=env).returncode
    with open(log, "w") as output:
        return subprocess.run(command, env=env, stdout=output, stderr=subprocess.STDOUT).returncode


def sweep(folder: Path, overrides: list[str], shared: list[str]) -> None:
    """A `python -m lmzoo.train -m` sweep into `folder` (its output in folder.log beside it), then its comparison."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    log = folder.parent / f"{folder.name}.log"
    code = run([sys.executable, "-m", "lmzoo.train", "-m", *overrides, *shared, f"hydra.sweep.dir={folder}"], log)
    print((folder / "comparison.md").read_text() if (folder / "comparison.md").is_file() else "")
    if code:
        print(f"the sweep exited with {code}: see {log}")


def throughput(folder: Path) -> str:
    """Training tokens/s x active parameters of each model (mean over its seeds), relative to gpt_rope's."""
    rows = {}
    for summary in (run.summary for run in read_sweep(folder) if run.value("tokens_per_sec")):
        row = rows.setdefault(summary["model"], {"model": summary["model"], "rates": []})
        row["rates"].append(summary["tokens_per_sec"])
        row["active_parameters"] = summary["active_parameters"]
    for row in rows.values():
        row["tokens_per_sec"] = sum(row["rates"]) / len(row["rates"])
        row["work"] = row["tokens_per_sec"] * row["active_parameters"]
    dense = rows["gpt_rope"]["work"] if "gpt_rope" in rows else None
    for row in rows.values():
        row["relative"] = row["work"] / dense if dense else None
    return table(list(rows.values()), [
        Column("model", "model"), Column("active parameters", "active_parameters", lambda v: f"{v:,}"),
        Column("tokens/s (mean)", "tokens_per_sec", lambda v: f"{v:,.0f}"),
        Column("tokens/s x active params vs gpt_rope", "relative", lambda v: f"{v:.2f}")])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="a new folder (or one without these parts' sweeps yet)")
    parser.add_argument("--flops", type=float, default=1.5e12, help="the zoo's FLOP budget per run")
    parser.add_argument("--tokens", type=float, default=1e5, help="the token budget of AdamW against Muon")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--max-steps", type=int, default=3000, help="budget.max_steps of the zoo (bigram's ceiling)")
    parser.add_argument("--sizes", default="8.2e3,2e4,5e4,1.2e5", help="gpt_rope's model.target_params for the IsoFLOP sweep")
    parser.add_argument("--budgets", default="2e11,4e11,8e11", help="the IsoFLOP sweep's budget.flops")
    parser.add_argument("--layers", type=int, default=2, help="gpt_rope's model.n_layer in the IsoFLOP sweep")
    parser.add_argument("--parts", default=",".join(PARTS))
    parser.add_argument("--data", default=str(TINYSHAKESPEARE))
    parser.add_argument("--smoke", action="store_true", help="tiny budgets and 2 seeds: does every part run?")
    args = parser.parse_args()
    settings = {**SHARED, "data.path": args.data, "paths.data_dir": REPO / "data"}
    if args.smoke:
        vars(args).update(SMOKE)
        settings.update(SMOKE_SHARED)
    shared = [f"{key}={value}" for key, value in settings.items()]
    parts = args.parts.split(",")
    if set(parts) - set(PARTS):
        sys.exit(f"error: --parts takes {', '.join(PARTS)}; not {', '.join(sorted(set(parts) - set(PARTS)))}")
    out = Path(args.out).resolve()
    if taken := [part for part in parts if (out / part).exists()]:
        sys.exit(f"error: {', '.join(str(out / part) for part in taken)} exists; choose another --out")
    seeds = "seed=" + ",".join(str(seed) for seed in range(1, args.seeds + 1))
    if "zoo" in parts:
        sweep(out / "zoo", [f"model={','.join(ZOO)}", seeds, f"budget.flops={args.flops:g}",
                            f"budget.max_steps={args.max_steps}"], shared)
        figure = out / "zoo_flops.png"
        run([sys.executable, "-m", "lmzoo.plot", str(out / "zoo"), "--x", "flops", "--out", str(figure)])
        print(f"\nThroughput per active parameter:\n\n{throughput(out / 'zoo')}\n")
    if "optim" in parts:
        sweep(out / "optim", ["model=gpt_rope", "optim=adamw,muon", seeds, f"budget.tokens={args.tokens:g}"], shared)
    if "scaling" in parts:
        sweep(out / "scaling", ["model=gpt_rope", f"model.n_layer={args.layers}", f"model.target_params={args.sizes}",
                                f"budget.flops={args.budgets}"], shared)
        run([sys.executable, "-m", "lmzoo.scaling", str(out / "scaling")])


if __name__ == "__main__":
    main()
