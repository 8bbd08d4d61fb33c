"""python -m lmzoo.generate ckpt=PATH [prompt=...|prompt=@FILE|prompt=[A,B]] [--out FILE.jsonl] [controls ...]

The values of ckpt, prompt and out are taken as typed: `prompt=宝玉道` or `prompt="Hello, world"` need no
quoting for Hydra.
"""

import dataclasses
import json
import sys
from pathlib import Path

import torch
from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf

from lmzoo.checkpoints.load import load_model, model_card, resolve_device
from lmzoo.cli.hydra_command import hydra_command
from lmzoo.errors import UserError, check_field_types
from lmzoo.files import write_atomically
from lmzoo.inference.sampling import SamplingSettings, check_tokens_fit, complete

SEPARATOR = "\n---------------\n"
# The keys and defaults of the sampling controls are SamplingSettings' own: conf/generate.yaml takes them from
# this node, so the command, the Python API and the sample that ends a training run share one set of defaults.
SAMPLING_DEFAULTS = {key: list(value) if isinstance(value, tuple) else value
                     for key, value in dataclasses.asdict(SamplingSettings()).items()}
ConfigStore.instance().store(name="sampling", node=SAMPLING_DEFAULTS)


@hydra_command("generate", literal=("ckpt", "prompt", "out"))
def run(cfg: DictConfig) -> None:
    sample(cfg)


@dataclasses.dataclass(frozen=True, kw_only=True)
class Request:
    """The keys of the generate command besides the sampling settings, checked before the model loads."""

    ckpt: str
    prompt: str | list[str]
    stop: str | list[str]
    seed: int
    num_samples: int
    out: str | None
    device: str

    def __post_init__(self):
        check_field_types(self, None)
        if not 0 <= self.seed < 2**63:
            raise UserError(f"seed must lie in [0, 2**63), got {self.seed}")
        if self.num_samples < 1:
            raise UserError(f"num_samples must be >= 1, got {self.num_samples}")
        if self.prompt == []:
            raise UserError("prompt=[] holds no prompt; pass prompt='' to sample from nothing, or prompt=[A,B]")
        if self.out is not None and Path(self.out).expanduser().is_dir():
            raise UserError(f"out={self.out} is a folder; pass a file to write, such as out=samples.jsonl")


def sampling_settings(cfg: DictConfig) -> SamplingSettings:
    """The sampling keys of the generate config, checked."""
    values = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    return SamplingSettings(**{key: values[key] for key in SAMPLING_DEFAULTS if key != "stop"}, stop=stop_strings(values["stop"]))


def sample(cfg: DictConfig) -> None:
    """Sample as configured: stream the samples to stdout, or write them to cfg.out as JSON lines."""
    values = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    request = Request(**{key: values[key] for key in (field.name for field in dataclasses.fields(Request))})
    settings = sampling_settings(cfg)
    prompts = [read_prompt(p) for p in (request.prompt if isinstance(request.prompt, list) else [request.prompt])]
    device = resolve_device(request.device)
    # Before the rows are listed: a prompt of one token at least, and every new one.
    check_tokens_fit(len(prompts) * request.num_samples, 1 + settings.max_new_tokens, device)
    rows = [(prompt, index) for prompt in prompts for index in range(request.num_samples)]
    model, tokenizer, record = load_model(request.ckpt, device)
    print(model_card(model, record), file=sys.stderr)
    pieces = complete(model, tokenizer, [prompt for prompt, _ in rows], settings,
                      generator=torch.Generator(device).manual_seed(request.seed))
    if request.out is None:
        printer = InOrder([prompt for prompt, _ in rows])
        for row, piece, reason in pieces:
            printer.write(row, piece, reason is not None)
        print()
        return
    texts, reasons = [""] * len(rows), [None] * len(rows)
    for row, piece, reason in pieces:
        texts[row] += piece
        reasons[row] = reason
    records = [
        {"prompt": prompt, "sample": index, "completion": text, "stop_reason": reason}
        for (prompt, index), text, reason in zip(rows, texts, reasons)
    ]
    payload = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
    write_atomically(Path(request.out).expanduser(), payload.encode("utf-8"), "choose a writable path with out=FILE.jsonl")
    print(f"wrote {len(records)} samples to {request.out}", file=sys.stderr)


def stop_strings(stop: str | list[str]) -> tuple[str, ...]:
    """The stop strings; `\\n` in one stands for a newline, which is awkward to type on a command line."""
    return tuple(text.replace("\\n", "\n") for text in ([stop] if isinstance(stop, str) else stop))


def read_prompt(prompt: str) -> str:
    """The prompt text; `@FILE` stands for the contents of FILE."""
    if not prompt.startswith("@"):
        return prompt
    path = Path(prompt[1:]).expanduser()
    if path.is_dir():
        raise UserError(f"prompt file {str(path)!r} is a folder; pass prompt=@PATH to a text file")
    if not path.is_file():
        state = "is not a regular file" if path.exists() else "does not exist"
        raise UserError(f"prompt file {str(path)!r} {state}; pass prompt=@PATH to a text file")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise UserError(f"prompt file {str(path)!r} is not UTF-8 (byte {error.start}); convert it, "
                        "for example with iconv") from None
    if not text:
        raise UserError(f"prompt file {str(path)!r} is empty; write a prompt into it, or pass prompt='' "
                        "to sample from nothing")
    return text


class InOrder:
    """Prints samples one after another as they are generated together: the sample on screen streams
    as its tokens arrive, and the text of later ones waits until their turn."""

    def __init__(self, prompts: list[str]):
        self.prompts = prompts
        self.waiting = [""] * len(prompts)
        self.ended = [False] * len(prompts)
        self.current = -1

    def write(self, row: int, piece: str, ended: bool) -> None:
        self.waiting[row] += piece
        self.ended[row] |= ended
        while self.current < len(self.prompts):
            if self.current >= 0:
                sys.stdout.write(self.waiting[self.current])
                self.waiting[self.current] = ""
                if not self.ended[self.current]:
                    break
            self.current += 1
            if self.current < len(self.prompts):
                sys.stdout.write((SEPARATOR if self.current else "") + self.prompts[self.current])
        sys.stdout.flush()


def main() -> None:
    """Entry point: `--out FILE` is accepted as well as Hydra's `out=FILE`."""
    sys.argv = [sys.argv[0], *out_flag_as_override(sys.argv[1:])]
    run()


def out_flag_as_override(args: list[str]) -> list[str]:
    result = []
    for arg in args:
        if result and result[-1] == "--out":
            result[-1] = f"out={arg}"
        elif arg.startswith("--out="):
            result.append("out=" + arg.removeprefix("--out="))
        else:
            result.append(arg)
    return result
