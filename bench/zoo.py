"""The seven architectures at one step budget on tinyshakespeare char, through the user's sweep command.

    python bench/zoo.py [--steps 1000] [--batch-size 16] [--models bigram,mlp,mlp_permutation,...] [--data PATH]

Runs `python -m lmzoo.train -m model=bigram,mlp,gpt,gpt_rope,block_scaling,moe,moa_moe` with every
model's default size, and the seed's MLP (`mlp` on permutation codes of 12 bits instead of embeddings) as
a sweep of its own, then prints the comparison table with one more column: training throughput per
active parameter (tokens/s x active parameters) relative to dense gpt_rope. Checks the expected
ordering (bigram worst, then mlp, the attention models ahead) and that MoE's throughput per active
parameter is within 2x of gpt_rope's.

Training runs on one thread: on a CPU shared with other work, threads fighting over cores make
throughput swing several-fold, while one thread per run keeps the models' ratios stable.
"""

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from lmzoo.reports.compare import RUN_COLUMNS, Column, read_sweep, table

ZOO = ["bigram", "mlp", "gpt", "gpt_rope", "block_scaling", "moe", "moa_moe"]
# Settings of a model of the zoo, run and reported under their own name.
VARIANTS = {"mlp_permutation": ["model=mlp", "model.input_encoding=permutation", "model.code_bits=12"]}
ATTENTION = ["gpt", "gpt_rope", "block_scaling", "moe", "moa_moe"]
REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--models", default=",".join([*ZOO[:2], *VARIANTS, *ZOO[2:]]),
                        help="a subset, for longer runs; checks need all")
    parser.add_argument("--data", default=str(REPO.parent / "shared" / "data" / "tinyshakespeare.txt"))
    args = parser.parse_args()
    names = args.models.split(",")
    models = [name for name in names if name not in VARIANTS]
    with tempfile.TemporaryDirectory() as work:
        def sweep(folder: Path, overrides: list[str]) -> list[dict]:
            subprocess.run([
                sys.executable, "-m", "lmzoo.train", "-m", *overrides, f"data.path={args.data}",
                f"paths.data_dir={work}/data", f"hydra.sweep.dir={folder}", f"trainer.max_steps={args.steps}",
                f"trainer.val_check_interval={args.steps // 4}", "optim.lr=3e-3", f"optim.warmup_steps={min(50, args.steps)}",
                f"data.batch_size={args.batch_size}", "callbacks.early_stopping.patience=100",
                "trainer.enable_progress_bar=false", "sample_tokens=0",
            ], check=True, stdout=subprocess.DEVNULL, env={**os.environ, "OMP_NUM_THREADS": "1"})
            return [run.summary for run in read_sweep(folder)]

        rows = {row["model"]: row for row in sweep(Path(work) / "sweep", [f"model={','.join(models)}"])} if models else {}
        for name in (name for name in names if name in VARIANTS):
            rows[name] = {**sweep(Path(work) / name, VARIANTS[name])[0], "model": name}

    def efficiency(row: dict) -> float:
        return row["tokens_per_sec"] * row["active_parameters"]

    dense = efficiency(rows["gpt_rope"]) if "gpt_rope" in rows else None
    for row in rows.values():
        row["efficiency"] = efficiency(row) / dense if dense else None
    columns = [Column("model", "model"), *(c for c in RUN_COLUMNS if c.key not in ("setting", "seed", "run")),
               Column("tokens/s x active params vs gpt_rope", "efficiency", lambda v: f"{v:.2f}")]
    print(f"{args.steps} steps each, batch {args.batch_size} x 64 tokens, lr 3e-3, one CPU thread:\n")
    print(table([rows[name] for name in names if name in rows], columns))
    if not set(ZOO) <= set(rows):
        return

    loss = {name: rows[name]["best_val_loss"] for name in ZOO}
    checks = {
        "bigram is worst": loss["bigram"] == max(loss.values()),
        "mlp is next": loss["mlp"] == max(loss[name] for name in ZOO if name != "bigram"),
        "attention models clearly ahead of mlp (by 0.1 nats or more)":
            max(loss[name] for name in ATTENTION) < loss["mlp"] - 0.1,
        "moe throughput per active parameter within 2x of gpt_rope": rows["moe"]["efficiency"] >= 0.5,
        "moa_moe throughput per active parameter within 2x of gpt_rope": rows["moa_moe"]["efficiency"] >= 0.5,
    }
    print()
    for check, passed in checks.items():
        print(f"{'PASS' if passed else 'FAIL'}  {check}")
    sys.exit(0 if all(checks.values()) else 1)


if __name__ == "__main__":
    main()
