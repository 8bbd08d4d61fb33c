"""Preparation throughput and peak memory, against tiktoken's own batch encoder on the same text.

    python bench/prepare.py --sizes 200 1000 [--workers 2] [--tokenizer gpt2]

Builds texts of the given sizes (MB) under /tmp by repeating the shared corpora (tinyshakespeare,
TinyStories slice, 红楼梦), then for each runs, each in a fresh subprocess so that peak RSS is its own:
  - lmzoo: `prepare` (read, split, tokenize on threads, write train.bin/val.bin/meta.json);
  - tiktoken: `encode_ordinary_batch` on the same file read in 1M-character pieces, with the same
    number of threads, ids counted and dropped (no splitting, no writing).
Times are taken inside the child, after its imports. Prints a Markdown table: MB/s, the ratio
lmzoo / tiktoken, and peak RSS (with the RSS after imports, before any work, for reference).
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
CORPORA = [SHARED / "data" / name for name in ("tinyshakespeare.txt", "tinystories-valid.txt", "hongloumeng.txt")]
WORKDIR = Path("/tmp/lmzoo-bench-prepare")


def build_text(megabytes: int) -> Path:
    path = WORKDIR / f"corpus-{megabytes}MB.txt"
    if path.is_file():
        return path
    WORKDIR.mkdir(parents=True, exist_ok=True)
    unit = b"".join(corpus.read_bytes() for corpus in CORPORA)
    with open(path.with_suffix(".part"), "wb") as file:
        for _ in range(megabytes * 10**6 // len(unit) + 1):
            file.write(unit)
    os.replace(path.with_suffix(".part"), path)
    return path


def run_lmzoo(path: Path, tokenizer: str, workers: int) -> dict:
    import shutil

    from lmzoo.data import DataConfig, prepare

    config = DataConfig(name=f"bins-{path.stem}", root=str(WORKDIR), tokenizer={"kind": "tiktoken", "name": tokenizer},
                        path=str(path), prepare_workers=workers)
    shutil.rmtree(config.data_dir, ignore_errors=True)
    meta = prepare(config, progress=False)
    return {"tokens": sum(split.tokens for split in meta.splits.values())}


def run_tiktoken(path: Path, tokenizer: str, workers: int) -> dict:
    import tiktoken

    encoding = tiktoken.get_encoding(tokenizer)
    tokens, batch = 0, []
    with open(path, encoding="utf-8") as file:
        for piece in iter(lambda: file.read(1 << 20), ""):
            batch.append(piece)
            if len(batch) == 2 * workers:
                tokens += sum(map(len, encoding.encode_ordinary_batch(batch, num_threads=workers)))
                batch = []
    tokens += sum(map(len, encoding.encode_ordinary_batch(batch, num_threads=workers)))
    return {"tokens": tokens}


def measure(kind: str, path: Path, tokenizer: str, workers: int) -> dict:
    """Run one kind in a child process; its wall time and its own peak RSS."""
    command = [sys.executable, __file__, "--child", kind, str(path), tokenizer, str(workers)]
    child = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    output = child.stdout.read()
    _, status, usage = os.wait4(child.pid, 0)
    if status != 0:
        raise SystemExit(f"{kind} failed on {path}")
    result = json.loads(output)
    return {**result, "mb_per_s": path.stat().st_size / 10**6 / result["seconds"], "peak_rss_mb": usage.ru_maxrss / 1024}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", type=int, nargs="+", default=[200, 1000])
    parser.add_argument("--workers", type=int, default=os.cpu_count())
    parser.add_argument("--tokenizer", default="gpt2")
    parser.add_argument("--child", nargs=4)
    args = parser.parse_args()
    os.environ.setdefault("TIKTOKEN_CACHE_DIR", str(SHARED / "tiktoken-cache"))
    if args.child:
        kind, path, tokenizer, workers = args.child
        run = run_lmzoo if kind == "lmzoo" else run_tiktoken
        import lmzoo.data  # noqa: F401  (imports are not timed, and their memory is reported apart)

        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        started = time.perf_counter()
        result = run(Path(path), tokenizer, int(workers))
        print(json.dumps({**result, "seconds": time.perf_counter() - started, "rss_after_imports_mb": before}))
        return
    print(f"{args.tokenizer}, {args.workers} threads, {os.cpu_count()} cores\n")
    print("| text | lmzoo MB/s | tiktoken MB/s | ratio | lmzoo peak RSS (after imports) | tiktoken peak RSS |")
    print("| --- | --- | --- | --- | --- | --- |")
    for size in args.sizes:
        path = build_text(size)
        ours = measure("lmzoo", path, args.tokenizer, args.workers)
        theirs = measure("tiktoken", path, args.tokenizer, args.workers)
        # Same text; the baseline cuts it anywhere, so its count differs by a few tokens per cut.
        assert abs(ours["tokens"] - theirs["tokens"]) < 0.001 * theirs["tokens"], (ours, theirs)
        print(f"| {size} MB | {ours['mb_per_s']:.2f} | {theirs['mb_per_s']:.2f} "
              f"| {ours['mb_per_s'] / theirs['mb_per_s']:.2f} | {ours['peak_rss_mb']:.0f} MB "
              f"({ours['rss_after_imports_mb']:.0f} MB) | {theirs['peak_rss_mb']:.0f} MB |", flush=True)


if __name__ == "__main__":
    main()
