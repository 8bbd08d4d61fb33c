"""What a recall study costs on this machine, before it runs: a training step of each shape it sweeps, timed.

    python bench/recall_cost.py                          # experiment=recall: 6 models x 3 widths x 3 difficulties
    python bench/recall_cost.py --experiment recall_mad --jobs 2

Reads the study's sweep from its preset (conf/experiment/), builds each model as its runs build it (the preset's
architecture, widths and data, random init) and times a training step as a run takes it in fp32 on the task's
first training batch (bench/recurrent.py's training_step: forward with dropout on, the run's loss over the answers
alone, backward, clipping, lmzoo's fused AdamW). Each shape is the mean of `--steps` steps after 2 warm-up steps, on
`--threads` threads. Prints a row per model and width, a column per task, then the study's cost: every shape's
step times its runs (the sweep's other keys: learning rates, seeds) times `trainer.max_steps`, in core-hours and in
hours over `--jobs` parallel jobs (an upper bound: runs that reach the early-stopping threshold stop sooner;
validation adds about 1%). Run it alone on the machine.
"""

import argparse
import itertools
import math

import torch
from common import compose_train
from hydra import compose, initialize_config_module
from hydra.utils import instantiate
from recurrent import training_step

from lmzoo.training.datamodule import data_module
from lmzoo.training.module import LitLM
from lmzoo.training.optim import OptimConfig, configure_adamw

MODEL_KEY = "experiment/recall/model@_global_"


def sweep_params(experiment: str) -> dict[str, list[str]]:
    with initialize_config_module(config_module="lmzoo.conf", version_base="1.3"):
        study = compose(config_name="train", overrides=[f"experiment={experiment}"], return_hydra_config=True)
    return {key: str(values).split(",") for key, values in study.hydra.sweeper.params.items()}


def step_seconds(overrides: list[str], steps: int) -> float:
    cfg = compose_train(overrides)
    data = data_module(instantiate(cfg.data, _convert_="all"))
    data.prepare_data()
    batch = next(iter(data.train_dataloader()))
    model = instantiate(cfg.model, vocab_size=cfg.data.vocab_size, _convert_="all").build().train()
    lit = LitLM(model, OptimConfig(), data.tokenizer, scores_answers=data.scores_answers)
    optimizer = configure_adamw(model, OptimConfig(lr=cfg.optim.lr), torch.device("cpu"))["optimizer"]
    for _ in range(2):
        training_step(model, optimizer, batch[0], False, lambda: lit.cross_entropy(batch)[0])
    return sum(training_step(model, optimizer, batch[0], False, lambda: lit.cross_entropy(batch)[0])
               for _ in range(steps)) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--experiment", default="recall")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--jobs", type=int, default=2, help="the study's parallel jobs (hydra.launcher.n_jobs)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    params = sweep_params(args.experiment)
    # The keys that change a step's shape or model; the others (rates, seeds) multiply the runs of each shape.
    task_key = next(key for key in params if key.startswith("experiment/") and key != MODEL_KEY)
    shaped = [MODEL_KEY, task_key] + [key for key in params if key.startswith("model.")]
    runs_per_shape = math.prod(len(values) for key, values in params.items() if key not in shaped)
    study = compose_train([f"experiment={args.experiment}"])
    max_steps, widths = study.trainer.max_steps, params.get("model.n_embd", [str(study.model.n_embd)])
    print(f"experiment={args.experiment}: seconds a training step, fp32, {args.threads} thread(s)\n")
    print("| model | width | " + " | ".join(params[task_key]) + " |")
    print("| --- | --- |" + " --- |" * len(params[task_key]))
    total = 0.0
    for model, width in itertools.product(params[MODEL_KEY], widths):
        row = []
        for task in params[task_key]:
            overrides = [f"experiment={args.experiment}", f"{MODEL_KEY}={model}", f"{task_key}={task}",
                         f"model.n_embd={width}"]
            seconds = step_seconds(overrides, args.steps)
            total += seconds
            row.append(f"{seconds:.3f} s")
        print(f"| {model} | {width} | " + " | ".join(row) + " |", flush=True)
    core_hours = total * runs_per_shape * max_steps / 3600
    print(f"\nEvery shape's step: {total:.1f} s; x {runs_per_shape} runs a shape x {max_steps:,} steps = "
          f"{core_hours:.1f} core-hours, {core_hours / args.jobs:.1f} hours over {args.jobs} jobs (at most: runs "
          "that solve their task stop sooner)")


if __name__ == "__main__":
    main()
