"""Loss, perplexity and bits per byte of a model on a whole validation or test split of a text; loss and accuracy
over every answer of a synthetic task's split.

Every token of a text's split but the first is predicted exactly once, from non-overlapping windows of the model's
context taken in order, so the numbers are the same every time; a task's split is its fixed examples.
"""

import math

import numpy as np
import torch
import torch.nn.functional as F

from lmzoo.data import DataConfig, prepare
from lmzoo.data.bins import BinsMeta
from lmzoo.data.tasks import IGNORE, FixedBatches, TaskConfig, correct_answers, task_splits
from lmzoo.data.tokenizer import describe_tokenizer
from lmzoo.data.windows import open_tokens, window_batch
from lmzoo.errors import UserError
from lmzoo.models import LanguageModel


def bits_per_byte(nats_per_token, tokens_per_byte: float):
    """Loss in bits per byte of the original text: one scale for char, BPE and any other tokenizer."""
    return nats_per_token / math.log(2) * tokens_per_byte


@torch.no_grad()
def split_loss(model: LanguageModel, tokens: np.ndarray, batch_size: int) -> tuple[float, int]:
    """Mean cross-entropy in nats over every token of `tokens` but the first, and how many that is."""
    block_size = model.block_size
    full = (len(tokens) - 1) // block_size
    offsets = np.arange(full) * block_size
    batches = [(offsets[i : i + batch_size], block_size) for i in range(0, full, batch_size)]
    rest = len(tokens) - 1 - full * block_size
    if rest:
        batches.append((np.array([full * block_size]), rest))
    total = torch.zeros((), dtype=torch.float64)
    for batch_offsets, length in batches:
        x, y = (t.to(model.device) for t in window_batch(tokens, batch_offsets, length))
        logits = model(x).logits
        total += F.cross_entropy(logits.flatten(0, 1).float(), y.flatten(), reduction="sum").double().cpu()
    return total.item() / (len(tokens) - 1), len(tokens) - 1


def check_tokenizer(data: DataConfig, tokenizer_spec: dict) -> None:
    """Refuse, before any data is prepared, data whose tokenizer cannot be the checkpoint's."""
    config = data.tokenizer
    differs = config["kind"] != tokenizer_spec["kind"] or (
        config["kind"] == "tiktoken" and config["name"] != tokenizer_spec["name"]) or (
        config["kind"] == "bpe" and config.get("json", tokenizer_spec["json"]) != tokenizer_spec["json"])
    if differs:
        raise tokenized_differently(data, tokenizer_spec)


def tokenized_differently(data: DataConfig, tokenizer_spec: dict) -> UserError:
    return UserError(f"data set {data.name!r} is tokenized differently from the checkpoint; evaluate on data the "
                     f"model was trained with ({describe_tokenizer(tokenizer_spec)}), or on any text with "
                     "data.path=FILE alone")


# The held-out splits a model is evaluated on: validation, which runs and tunes select by, and test, which they
# report.
EVALUATED_SPLITS = ("val", "test")


@torch.no_grad()
def answers_result(model: LanguageModel, inputs: np.ndarray, targets: np.ndarray, batch_size: int) -> dict:
    """Mean cross-entropy and exact accuracy over every answer of a task's examples (targets not IGNORE), and how
    many answers that is: val/loss and val/accuracy over a whole split, in eval mode."""
    loss, correct, answers = 0.0, 0, 0
    was_training = model.training
    model.eval()
    try:
        for batch_inputs, batch_targets in FixedBatches(inputs, targets, batch_size):
            batch_inputs, batch_targets = batch_inputs.to(model.device), batch_targets.to(model.device)
            scored = batch_targets != IGNORE
            logits = model(batch_inputs, only_at=scored).logits
            loss += F.cross_entropy(logits.float(), batch_targets[scored], reduction="sum").item()
            correct += int(correct_answers(logits, batch_targets).sum())
            answers += len(logits)
    finally:
        model.train(was_training)
    return {"answers": answers, "loss": loss / answers, "accuracy": correct / answers}


def evaluate(model: LanguageModel, tokenizer_spec: dict, data: DataConfig | TaskConfig, batch_size: int,
             split: str = "val") -> dict:
    """The model's loss, perplexity and bits per byte on `split` of a text (prepared if needed); its loss and
    accuracy over the answers of a synthetic task's `split`."""
    if isinstance(data, TaskConfig):
        # A task's ids are its tokenizer: another vocabulary would feed the model ids it has no embedding for.
        if data.tokenizer != tokenizer_spec:
            raise UserError(f"data={data.name} has {describe_tokenizer(data.tokenizer)}, the checkpoint "
                            f"{describe_tokenizer(tokenizer_spec)}; evaluate on data of the checkpoint's tokenizer, "
                            "or leave data= out for the data its run trained on")
        return {"data": data.name, "split": split,
                **answers_result(model, *task_splits(data)[split], batch_size)}
    check_tokenizer(data, tokenizer_spec)
    # The model's context is fixed: a text too short for it needs more text, not another block_size.
    meta = prepare(data, too_short="evaluate on a longer text")
    if meta.tokenizer != tokenizer_spec:
        raise tokenized_differently(data, tokenizer_spec)
    return {"data": data.name, **split_result(model, data.data_dir, meta, split, batch_size)}


def split_result(model: LanguageModel, data_dir, meta: BinsMeta, split: str, batch_size: int) -> dict:
    """Loss, perplexity and bits per byte over every token of `split` of the bins in `data_dir`."""
    loss, predicted = split_loss(model, open_tokens(data_dir / f"{split}.bin", meta.dtype), batch_size)
    return {
        "split": split,
        "tokens": predicted,
        "bytes": meta.splits[split].bytes,
        "loss": loss,
        "perplexity": math.exp(loss),
        "bits_per_byte": bits_per_byte(loss, meta.tokens_per_byte(split)),
    }


def table(result: dict) -> str:
    if "accuracy" in result:
        return (f"{'data':<20} {'split':<6} {'answers':>10} {'loss':>8} {'accuracy':>9}\n"
                f"{result['data']:<20} {result['split']:<6} {result['answers']:>10,} {result['loss']:>8.4f} "
                f"{result['accuracy']:>9.4f}")
    header = f"{'data':<20} {'split':<6} {'tokens':>12} {'loss':>8} {'perplexity':>11} {'bits/byte':>10}"
    row = (f"{result['data']:<20} {result['split']:<6} {result['tokens']:>12,} {result['loss']:>8.4f} "
           f"{result['perplexity']:>11.3f} {result['bits_per_byte']:>10.4f}")
    return f"{header}\n{row}"
