"""What the tests share: paths, tiny configs and models, and running the commands as a user does."""

import dataclasses
import functools
import importlib
import math
import os
import subprocess
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_module
from hydra.utils import instantiate
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from lmzoo.models import LanguageModel, ModelConfig
from lmzoo.models.presets import model_overrides, preset_names, resized
from lmzoo.models.recurrent import ShortConv

REPO = Path(__file__).resolve().parents[2]
# The shared data folder beside the repository; LMZOO_SHARED names another (a GPU machine gets a copy of it).
SHARED = Path(os.environ.get("LMZOO_SHARED", REPO.parent / "shared"))
SHAKESPEARE = SHARED / "data" / "tinyshakespeare.txt"
FIXTURES = REPO / "tests" / "fixtures"

# A quiet smoke run of any model; TINY adds the widths of a tiny gpt_rope (the default model).
SMOKE = [
    "trainer=debug",
    "trainer.enable_progress_bar=false",
    "trainer.enable_model_summary=false",
    "block_size=32",
    "sample_tokens=0",
]
TINY = [*SMOKE, "model.n_layer=2", "model.n_head=2", "model.n_embd=32"]

V = 70
# The zoo: every preset of conf/model/, shrunk to TINY_WIDTH (its config's with_width) and TINY_DEPTH layers, on a
# vocabulary of V tokens.
PRESETS = preset_names()
TINY_WIDTH = 64
TINY_DEPTH = 2
# The context of a tiny model (make); compose_zoo's runs use SMOKE's block_size.
BLOCK = 24


def tiny_config(name: str) -> ModelConfig | None:
    """Preset `name` at block size BLOCK, vocabulary V, width TINY_WIDTH and TINY_DEPTH layers (presets.resized);
    every other choice is the preset's. None if it has no such width."""
    config = shrunk_preset(name)[1]
    return config and dataclasses.replace(config)


@functools.cache
def shrunk_preset(name: str) -> tuple[ModelConfig, ModelConfig | None]:
    """Preset `name` at block size BLOCK as conf/model/ has it, and shrunk."""
    preset = instantiate(compose_config("train", f"model={name}", f"block_size={BLOCK}").model, vocab_size=V,
                         _convert_="all")
    return preset, resized(preset, TINY_WIDTH, TINY_DEPTH)


def make(name: str, seed: int = 0) -> LanguageModel:
    """Preset `name`'s tiny model (tiny_config), seeded."""
    torch.manual_seed(seed)
    return tiny_config(name).build()


def tiny_overrides(name: str) -> list[str]:
    """The command-line overrides that shrink `model=NAME` as tiny_config does."""
    return model_overrides(*shrunk_preset(name))


def triangular_solve_flops(matrix_shape, right_shape, *args, out_shape, **kwargs) -> int:
    """LAPACK's count of a triangular solve of n unknowns for m right-hand sides (dtrsm: m n^2), for each matrix
    of a batch: lmzoo's solve (gated_deltanet.unit_lower_solve) is one operator, which FlopCounterMode has no
    formula for."""
    *batch, n, m = right_shape
    return math.prod(batch) * n * n * m


def triangular_solve_backward_flops(inverse_shape, solution_shape, grad_shape, *args, out_shape, **kwargs) -> int:
    """The count of a triangular solve's backward as PyTorch's autograd of torch.linalg.solve_triangular takes
    it: a solve with the transposed matrix (LAPACK's count) and the product that makes the matrix's gradient."""
    *batch, n, m = grad_shape
    return 3 * math.prod(batch) * n * n * m


def counted_flops_per_token(model: LanguageModel, tokens: torch.Tensor, only_at: torch.Tensor | None = None
                            ) -> float:
    """PyTorch's count of one training step's FLOPs (forward and backward), per token; with `only_at`, of a
    step that scores those positions alone (a synthetic task's). Attention runs on SDPA's
    math backend, the one FlopCounterMode has formulas for on CPU. Where it has none: the triangular solves, at
    LAPACK's count (triangular_solve_flops, and triangular_solve_backward_flops for their backward); and the short convolutions, sums of shifted products, at its count of
    the depthwise F.conv1d each equals on the inputs it got, 3 times (the backward twice the forward, as
    FlopCounterMode counts the products' backward; its count of a grouped convolution's backward is a dense one's)."""
    model.train()
    inputs = []
    hooks = [module.register_forward_hook(lambda module, args, output: inputs.append((module, args[0].shape)))
             for module in model.modules() if isinstance(module, ShortConv)]
    solves = {torch.ops.lmzoo.unit_lower_solve: triangular_solve_flops,
              torch.ops.lmzoo.unit_lower_solve_backward: triangular_solve_backward_flops}
    try:
        with FlopCounterMode(display=False, custom_mapping=solves) as counter, sdpa_kernel(SDPBackend.MATH):
            output = model(tokens, only_at=only_at)
            scored = tokens.flatten() if only_at is None else tokens[only_at]
            loss = F.cross_entropy(output.logits.flatten(0, -2), scored)
            (loss if output.aux_loss is None else loss + output.aux_loss).backward()
    finally:
        for hook in hooks:
            hook.remove()
    convolutions = 0
    for conv, (batch, T, channels) in inputs:
        with FlopCounterMode(display=False) as conv_counter, torch.no_grad():
            F.conv1d(torch.zeros(batch, channels, T + conv.kernel_size[0] - 1), conv.weight, groups=channels)
        convolutions += 3 * conv_counter.get_total_flops()
    return (counter.get_total_flops() + convolutions) / tokens.numel()


def compose_train(tmp_path: Path, *overrides: str, tiny: bool = True):
    """The real train config with tiny, offline overrides, writing under tmp_path."""
    base = [f"data.path={SHAKESPEARE}", f"paths.data_dir={tmp_path / 'data'}", f"paths.output_dir={tmp_path / 'run'}"]
    return compose_config("train", *base, *(TINY if tiny else []), *overrides)


def compose_zoo(tmp_path: Path, name: str, *overrides: str):
    """The real train config of preset `name`, tiny (tiny_overrides), as compose_train writes it."""
    return compose_train(tmp_path, f"model={name}", *SMOKE, *tiny_overrides(name), *overrides, tiny=False)


def compose_config(name: str, *overrides: str, return_hydra_config: bool = False):
    """Config `name` composed as python -m lmzoo.NAME composes it: with the nodes its command stores."""
    importlib.import_module(f"lmzoo.cli.{name}")
    with initialize_config_module(config_module="lmzoo.conf", version_base="1.3"):
        return compose(config_name=name, overrides=list(overrides), return_hydra_config=return_hydra_config)


def train_process(tmp_path: Path, *overrides: str, timeout: float = 300):
    """`python -m lmzoo.train` with the tiny offline settings in a subprocess, its run folder tmp_path/run;
    test-only callbacks (helpers.fault_injection) can be added to it from the command line."""
    path = [str(REPO / "tests"), *filter(None, [os.environ.get("PYTHONPATH")])]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(path), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "lmzoo.train", f"data.path={SHAKESPEARE}", f"paths.data_dir={tmp_path / 'data'}",
               f"hydra.run.dir={tmp_path / 'run'}", *TINY, *overrides]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout)


def assert_same_weights(path: Path, expected: dict) -> None:
    """The checkpoint at `path` holds exactly the step and weights of the checkpoint `expected`."""
    from lmzoo.checkpoints import read_checkpoint

    actual = read_checkpoint(path)
    assert actual["global_step"] == expected["global_step"]
    for name, tensor in expected["state_dict"].items():
        assert torch.equal(actual["state_dict"][name], tensor), name


def run(*args, cwd, check=True, env=None):
    """`python -m ARGS` in a subprocess, as a user types it."""
    result = subprocess.run([sys.executable, "-m", *args], cwd=cwd, capture_output=True, text=True,
                            env={**os.environ, **(env or {})})
    if check and result.returncode != 0:
        raise AssertionError(f"{args} failed:\n{result.stdout}\n{result.stderr}")
    return result


def prepare_at(data_dir: Path, tokenizer: dict, **source):
    """lmzoo.data.prepare into `data_dir` (downloads beside it, in its parent's downloads/), quietly; the
    splits need only 3 tokens unless `block_size` is given."""
    from lmzoo.data import DataConfig, prepare

    config = DataConfig(name=data_dir.name, root=str(data_dir.parent), tokenizer=tokenizer,
                        **{"block_size": 1, **source})
    return prepare(config, progress=False)


def markdown_tables(text: str) -> list[list[dict]]:
    """The Markdown tables in `text`, each as its rows, each row as {header: cell}."""
    tables, lines = [], text.splitlines()
    for index, line in enumerate(lines):
        if line.startswith("| ") and index + 1 < len(lines) and lines[index + 1].startswith("| ---"):
            headers = [cell.strip() for cell in line.strip("|").split("|")]
            rows = []
            for row in lines[index + 2:]:
                if not row.startswith("|"):
                    break
                rows.append(dict(zip(headers, (cell.strip() for cell in row.strip("|").split("|")))))
            tables.append(rows)
    return tables
