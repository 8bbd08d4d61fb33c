"""Synthetic tasks as data: examples generated from a seed, with nothing to download or prepare.

Each example is `block_size` input tokens and as many targets: the token the model must emit at each position,
or IGNORE where it must emit nothing in particular. Only the answer positions are trained on and scored
(val/accuracy); what fills the others is the task's context, never a target.

The training set is `train_examples` examples drawn from the data seed's training stream, read in epochs, each in
an order of its own; validation (val_batches x batch_size examples) and a test set of the same size come from two
other streams, and an example that another split holds is drawn again, so that the three are disjoint.

The tasks keep the semantics of the published generators (never their code): MQAR as Zoology's
(HazyResearch/zoology, zoology/data/associative_recall.py), noisy recall and selective copying as MAD's
(athms/mad-lab, mad/data/instances.py).
"""

import dataclasses

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from lmzoo.errors import UserError, check_field_types

# F.cross_entropy's ignore_index: the target of a position that has no answer.
IGNORE = -100
# Each split's stream of the data seed; the last one orders the training set's epochs.
STREAMS = {"train": 0, "val": 1, "test": 2, "order": 3}
# Fresh draws of a split's examples before its settings are refused as having too few distinct examples.
DRAWS = 8
FILLERS = ("random", "blank")


@dataclasses.dataclass(kw_only=True)
class TaskConfig:
    """What every synthetic task shares: its vocabulary, its length (block_size), its batches, and the seed
    its examples come from."""

    # The task, as data= names it.
    name: str
    vocab_size: int
    block_size: int = 64
    batch_size: int = 32
    # Validation scores the same val_batches x batch_size examples every time.
    val_batches: int = 20
    # The training set, read in epochs (Zoology trains 100,000 examples for 64 epochs).
    train_examples: int = 100_000
    num_workers: int = 0
    seed: int = 1337

    def __post_init__(self):
        check_field_types(self, "data")
        for key in ("block_size", "batch_size", "val_batches", "train_examples", "vocab_size"):
            if getattr(self, key) <= 0:
                shown = key if key == "block_size" else f"data.{key}"
                raise UserError(f"{shown} must be positive, got {getattr(self, key)}")
        if self.num_workers < 0:
            raise UserError(f"data.num_workers must be >= 0, got {self.num_workers}")
        self.check()

    def check(self) -> None:
        """Refuse settings that cannot make a valid example, naming the limit."""

    def examples(self, rng: np.random.Generator, count: int) -> tuple[np.ndarray, np.ndarray]:
        """`count` examples drawn from `rng`: inputs and targets, each (count, block_size)."""
        raise NotImplementedError

    @property
    def tokenizer(self) -> dict:
        """The spec of the task's tokenizer: its ids written as numbers."""
        return {"kind": "ids", "vocab_size": self.vocab_size}

    @property
    def val_examples(self) -> int:
        return self.val_batches * self.batch_size


def distinct(rng: np.random.Generator, count: int, size: int, low: int, high: int) -> np.ndarray:
    """`count` rows of `size` distinct integers from [low, high), each row a uniform draw in random order (numpy's
    choice without replacement, row by row, vectorised)."""
    span = high - low
    if span < 2 * size:
        # Few to choose from: the first `size` of a random permutation of each row.
        return np.argsort(rng.random((count, span)), axis=1)[:, :size] + low
    # Many: draw with replacement, then draw again where a row repeats a value, each round at least halving them.
    rows = rng.integers(low, high, size=(count, size))
    while True:
        order = np.argsort(rows, axis=1, kind="stable")
        ordered = np.take_along_axis(rows, order, axis=1)
        repeated = np.zeros_like(rows, dtype=bool)
        np.put_along_axis(repeated, order[:, 1:], ordered[:, 1:] == ordered[:, :-1], axis=1)
        if not repeated.any():
            # Redrawn values sit at the later positions of their repeats: shuffle, so that positions are alike.
            return rng.permuted(rows, axis=1)
        rows[repeated] = rng.integers(low, high, size=int(repeated.sum()))


def weighted_order(rng: np.random.Generator, log_weights: np.ndarray, count: int, size: int) -> np.ndarray:
    """`count` rows of `size` distinct indices of `log_weights`, each drawn in turn without replacement with
    probability proportional to its weight, in the order drawn (numpy's choice(replace=False, p=...)): the
    largest of the log weights plus Gumbel noise (the Gumbel-top-k trick)."""
    scores = log_weights + rng.gumbel(size=(count, len(log_weights)))
    return np.argsort(-scores, axis=1)[:, :size]


@dataclasses.dataclass(kw_only=True)
class MQARConfig(TaskConfig):
    """Multi-query associative recall (Zoology, Arora et al. 2023): num_kv_pairs key-value pairs, then each key
    queried once; the answer, at the query, is its value. Keys come from the lower half of the vocabulary
    (token 0, the blank, excepted), values from the upper half, each key once in an example. Query i sits at
    2 x num_kv_pairs + 2 g_i, its gap g_i drawn without replacement from the (block_size - 2 num_kv_pairs) / 2
    slots with probability proportional to power_a g^(power_a - 1): most queries come soon after the pairs."""

    name: str = "mqar"
    vocab_size: int = 8192
    num_kv_pairs: int = 8
    power_a: float = 0.01
    # What fills the positions between queries: random tokens of the whole vocabulary, or the blank (0).
    filler: str = "random"

    def check(self) -> None:
        n = self.num_kv_pairs
        if n < 1:
            raise UserError(f"data.num_kv_pairs must be positive, got {n}")
        if 4 * n > self.block_size:
            raise UserError(f"block_size {self.block_size} is too short for data.num_kv_pairs={n}: the pairs and "
                            f"the queries take at least 4 x {n} = {4 * n} tokens; raise block_size or lower "
                            "data.num_kv_pairs")
        if self.vocab_size < 2 * (n + 1):
            raise UserError(f"data.vocab_size {self.vocab_size} is too small for data.num_kv_pairs={n}: {n} distinct "
                            f"keys from its lower half (without the blank) and values from its upper half take at "
                            f"least 2 x ({n} + 1) = {2 * (n + 1)} tokens")
        if self.power_a <= 0:
            raise UserError(f"data.power_a must be positive (1 spaces the queries uniformly), got {self.power_a}")
        if self.filler not in FILLERS:
            raise UserError(f"data.filler must be one of {', '.join(FILLERS)}, got {self.filler!r}")

    def examples(self, rng, count):
        n, length, half = self.num_kv_pairs, self.block_size, self.vocab_size // 2
        keys = distinct(rng, count, n, 1, half)
        values = distinct(rng, count, n, half, self.vocab_size)
        slots = np.arange(1, (length - 2 * n) // 2 + 1)
        gaps = weighted_order(rng, np.log(self.power_a) + (self.power_a - 1) * np.log(slots), count, n)
        queries = 2 * n + 2 * gaps
        inputs = (rng.integers(0, self.vocab_size, size=(count, length)) if self.filler == "random"
                  else np.zeros((count, length), dtype=np.int64))
        inputs[:, 0 : 2 * n : 2], inputs[:, 1 : 2 * n : 2] = keys, values
        np.put_along_axis(inputs, queries, keys, axis=1)
        targets = np.full((count, length), IGNORE)
        np.put_along_axis(targets, queries, values, axis=1)
        return inputs, targets


@dataclasses.dataclass(kw_only=True)
class NoisyRecallConfig(TaskConfig):
    """MAD's noisy in-context recall (Poli et al. 2024), multi-query as MAD's benchmark sets it: a stream of
    key-value pairs in which a key repeats with the value it had, each pair replaced by two noise tokens with
    probability frac_noise; the answer, wherever a key has been seen before, is its value, and the example ends
    with a key seen before and its value. Keys come from the lower half of the first vocab_size - noise_vocab_size
    tokens, values from the upper half (two keys may share a value), noise from the last noise_vocab_size. MAD
    trains on every next token; lmzoo on the answers only. An odd block_size + 1 starts with one noise token."""

    name: str = "noisy_recall"
    vocab_size: int = 32
    noise_vocab_size: int = 16
    frac_noise: float = 0.2

    def check(self) -> None:
        if self.noise_vocab_size < 1:
            raise UserError(f"data.noise_vocab_size must be positive, got {self.noise_vocab_size}")
        if self.vocab_size - self.noise_vocab_size < 2:
            raise UserError(f"data.vocab_size {self.vocab_size} leaves no keys and values beside "
                            f"data.noise_vocab_size={self.noise_vocab_size}: it must be at least "
                            f"{self.noise_vocab_size + 2}")
        if self.block_size < 3:
            raise UserError(f"block_size must be at least 3 for data=noisy_recall (a pair, then the key asked "
                            f"again), got {self.block_size}")
        if not 0 <= self.frac_noise < 1:
            raise UserError(f"data.frac_noise must lie in [0, 1), got {self.frac_noise}")

    def examples(self, rng, count):
        signal = self.vocab_size - self.noise_vocab_size
        half = signal // 2
        # The stream is block_size + 1 tokens (inputs and next tokens): pairs, the last one the probe.
        pairs, lead = divmod(self.block_size + 1, 2)
        values_of = rng.integers(half, signal, size=(count, half))
        keys = rng.integers(0, half, size=(count, pairs - 1))
        noise = rng.random((count, pairs - 1)) < self.frac_noise
        # One pair is never noise, so that the probe has a key to ask.
        noise[np.arange(count), rng.integers(0, pairs - 1, size=count)] = False
        # A pair's key seen before (noise apart): its value is an answer.
        marked = np.where(noise, half + np.arange(pairs - 1), keys)
        order = np.argsort(marked, axis=1, kind="stable")
        ordered = np.take_along_axis(marked, order, axis=1)
        seen = np.zeros_like(noise)
        np.put_along_axis(seen, order[:, 1:], ordered[:, 1:] == ordered[:, :-1], axis=1)
        # The probe: the key of a first sighting, each equally likely.
        first = ~noise & ~seen
        probe = np.take_along_axis(keys, np.argmax(np.where(first, rng.random(first.shape), -1), axis=1)[:, None], 1)
        keys = np.concatenate([keys, probe], axis=1)
        values = np.take_along_axis(values_of, keys, axis=1)
        answered = np.concatenate([seen, np.ones((count, 1), dtype=bool)], axis=1)
        noisy = np.concatenate([noise, np.zeros((count, 1), dtype=bool)], axis=1)
        stream = np.empty((count, self.block_size + 1), dtype=np.int64)
        targets = np.full_like(stream, IGNORE)
        stream[:, :lead] = rng.integers(signal, self.vocab_size, size=(count, lead))
        noise_tokens = rng.integers(signal, self.vocab_size, size=(count, pairs, 2))
        stream[:, lead::2] = np.where(noisy, noise_tokens[..., 0], keys)
        stream[:, lead + 1 :: 2] = np.where(noisy, noise_tokens[..., 1], values)
        targets[:, lead + 1 :: 2] = np.where(answered & ~noisy, values, IGNORE)
        return stream[:, :-1], targets[:, 1:]


@dataclasses.dataclass(kw_only=True)
class SelectiveCopyingConfig(TaskConfig):
    """MAD's selective copying (Poli et al. 2024; Gu & Dao 2023): num_tokens_to_copy tokens scattered among
    blanks, then the copy token, then as many blanks, at which the answers are the scattered tokens in order.
    The tokens to copy come from the first vocab_size - 2 tokens, the blank is vocab_size - 2, the copy token
    vocab_size - 1. As in MAD, each blank goes into one of the gaps before the tokens to copy, each equally
    likely."""

    name: str = "selective_copying"
    vocab_size: int = 16
    num_tokens_to_copy: int = 16

    def check(self) -> None:
        n = self.num_tokens_to_copy
        if n < 1:
            raise UserError(f"data.num_tokens_to_copy must be positive, got {n}")
        if self.block_size <= 2 * n + 1:
            raise UserError(f"block_size {self.block_size} is too short for data.num_tokens_to_copy={n}: the tokens, "
                            f"the copy token and the answers take more than 2 x {n} + 1 = {2 * n + 1} tokens; raise "
                            "block_size or lower data.num_tokens_to_copy")
        if self.vocab_size < 3:
            raise UserError(f"data.vocab_size must be at least 3 (a token to copy, the blank and the copy token), "
                            f"got {self.vocab_size}")

    def examples(self, rng, count):
        n, length = self.num_tokens_to_copy, self.block_size
        blank, copy = self.vocab_size - 2, self.vocab_size - 1
        blanks = length - 2 * n - 1
        tokens = rng.integers(0, blank, size=(count, n))
        # Blanks per gap: each blank's gap, counted row by row.
        chosen = rng.integers(0, n, size=(count, blanks)) + n * np.arange(count)[:, None]
        gaps = np.bincount(chosen.ravel(), minlength=count * n).reshape(count, n)
        positions = np.arange(n) + np.cumsum(gaps, axis=1)
        inputs = np.full((count, length), blank)
        np.put_along_axis(inputs, positions, tokens, axis=1)
        inputs[:, length - n - 1] = copy
        targets = np.full((count, length), IGNORE)
        targets[:, length - n :] = tokens
        return inputs, targets


TASKS = {config.name: config for config in (MQARConfig, NoisyRecallConfig, SelectiveCopyingConfig)}


def stream(seed: int, split: str) -> np.random.Generator:
    return np.random.default_rng([seed, STREAMS[split]])


def correct_answers(answer_logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Whether each answer of a synthetic task's targets (those not IGNORE) is the top token of its logits, the
    logits of the answers alone (`model(inputs, only_at=targets != IGNORE)`): val/accuracy is their share."""
    return answer_logits.argmax(dim=-1) == targets[targets != IGNORE]


def compact(inputs: np.ndarray, targets: np.ndarray, vocab_size: int) -> tuple[np.ndarray, np.ndarray]:
    """The examples in the smallest integer type that holds the vocabulary and IGNORE (a training set of Zoology's
    100,000 examples of 256 tokens takes 100 MB in int16, 400 in int64)."""
    dtype = np.int16 if vocab_size <= np.iinfo(np.int16).max else np.int32
    return inputs.astype(dtype), targets.astype(dtype)


def task_splits(config: TaskConfig) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The task's train, val and test examples (inputs, targets), disjoint: an example whose inputs an earlier split
    holds is drawn again from its split's stream."""
    train = config.examples(stream(config.seed, "train"), config.train_examples)
    held = {row.tobytes() for row in train[0]}
    splits = {"train": compact(*train, config.vocab_size)}
    for split in ("val", "test"):
        rng, inputs, targets = stream(config.seed, split), [], []
        needed = config.val_examples
        for _ in range(DRAWS):
            drawn = config.examples(rng, needed)
            for row, target in zip(*drawn):
                key = row.tobytes()
                if key not in held and len(inputs) < config.val_examples:
                    held.add(key)
                    inputs.append(row)
                    targets.append(target)
            needed = config.val_examples - len(inputs)
            if not needed:
                break
        else:
            raise UserError(f"data={config.name} has too few distinct examples for {config.val_examples} {split} "
                            f"examples apart from the {config.train_examples} training ones; raise data.vocab_size "
                            "or block_size, or lower data.train_examples")
        splits[split] = compact(np.stack(inputs), np.stack(targets), config.vocab_size)
    return splits


def as_batch(inputs: np.ndarray, targets: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.from_numpy(inputs.astype(np.int64)), torch.from_numpy(targets.astype(np.int64))


class EpochBatches(IterableDataset):
    """An endless stream of training batches over a fixed set of examples, read in epochs, each in an order drawn
    from (seed, epoch); batch i depends only on (seed, i, rank, world size), so a resumed run sees exactly the
    batches an uninterrupted one would (as lmzoo.data.windows.RandomWindows)."""

    def __init__(self, inputs: np.ndarray, targets: np.ndarray, batch_size: int, seed: int, rank: int = 0,
                 world_size: int = 1, start: int = 0):
        self.inputs, self.targets = inputs, targets
        self.batch_size, self.seed = batch_size, seed
        self.rank, self.world_size, self.start = rank, world_size, start

    def order(self, epoch: int) -> np.ndarray:
        return np.random.default_rng([self.seed, STREAMS["order"], epoch]).permutation(len(self.inputs))

    def __iter__(self):
        worker = get_worker_info()
        index = self.start + (worker.id if worker else 0)
        stride = worker.num_workers if worker else 1
        orders = {}
        while True:
            # Every rank takes its share of the global batch of step `index`.
            first = (index * self.world_size + self.rank) * self.batch_size
            epochs, places = np.divmod(np.arange(first, first + self.batch_size), len(self.inputs))
            orders = {epoch: orders[epoch] if epoch in orders else self.order(epoch) for epoch in set(epochs.tolist())}
            chosen = np.array([orders[e][p] for e, p in zip(epochs.tolist(), places.tolist())])
            yield as_batch(self.inputs[chosen], self.targets[chosen])
            index += stride


class FixedBatches(torch.utils.data.Dataset):
    """A split's examples in batches, in order: validation scores the same ones every time."""

    def __init__(self, inputs: np.ndarray, targets: np.ndarray, batch_size: int):
        self.inputs, self.targets, self.batch_size = inputs, targets, batch_size

    def __len__(self):
        return -(-len(self.inputs) // self.batch_size)

    def __getitem__(self, index):
        if not 0 <= index < len(self):
            raise IndexError(index)
        rows = slice(index * self.batch_size, (index + 1) * self.batch_size)
        return as_batch(self.inputs[rows], self.targets[rows])
