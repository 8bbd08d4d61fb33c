"""Several processes on one folder, for real: one at a time prepares a data folder or trains in a run folder,
a holder killed with -9 frees its folder and its half-written files are cleaned, Ctrl-C is one line."""

import os
import signal
import subprocess
import sys

import numpy as np
from helpers import SHAKESPEARE, TINY

from lmzoo.data import DataConfig, prepare, read_meta
from lmzoo.data.bins import SPLITS
from lmzoo.data.tokenizer import tokenizer_from_spec
from lmzoo.files import hold_folder


def start(*args, cwd):
    """`python -m ARGS` started in the background, its stderr readable line by line, with Ctrl-C's signal as a
    terminal leaves it (a test run started as a shell's background job would pass it on ignored)."""
    return subprocess.Popen([sys.executable, "-m", *args], cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env={**os.environ, "OMP_NUM_THREADS": "1"},
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def wait_for_line(process, text):
    """Read the process's stderr until a line holds `text` (it blocks until the process writes one)."""
    lines = []
    while line := process.stderr.readline():
        lines.append(line)
        if text in line:
            return
    raise AssertionError(f"no line with {text!r} in:\n{''.join(lines)}")


def data_config(tmp_path, source):
    return DataConfig(name="shakespeare_char", root=str(tmp_path / "data"), path=str(source), block_size=8)


def test_concurrent_prepares_of_one_data_folder_take_turns_and_leave_bins_that_match_their_meta(tmp_path):
    other = tmp_path / "other.txt"
    other.write_text(SHAKESPEARE.read_text()[:200_000].upper())
    data_dir = data_config(tmp_path, SHAKESPEARE).data_dir
    with hold_folder(data_dir, "preparing", wait=True, fix=""):
        prepares = [start("lmzoo.prepare", f"data.path={source}", f"paths.data_dir={tmp_path / 'data'}", cwd=tmp_path)
                    for source in (SHAKESPEARE, other)]
        for process in prepares:
            wait_for_line(process, f"waiting for PID {os.getpid()}, which is preparing {data_dir}")
    for process in prepares:
        assert process.wait(timeout=300) == 0, process.stderr.read()
    meta = read_meta(data_dir)
    assert meta is not None
    source = next(path for path in (SHAKESPEARE, other) if str(path) == meta.source)
    tokens = np.concatenate([np.fromfile(data_dir / f"{split}.bin", dtype=meta.dtype) for split in SPLITS])
    assert tokenizer_from_spec(meta.tokenizer).decode(tokens.tolist()) == source.read_text()


def test_a_training_in_a_held_run_folder_stops_at_once_naming_the_holder(tmp_path):
    run_dir = tmp_path / "run"
    with hold_folder(run_dir, "training in", wait=False, fix=""):
        second = subprocess.run([sys.executable, "-m", "lmzoo.train", *TINY, f"data.path={SHAKESPEARE}",
                                 f"hydra.run.dir={run_dir}"], cwd=tmp_path, capture_output=True, text=True)
        assert sorted(path.name for path in run_dir.iterdir()) == [".lmzoo.lock"]
    assert second.returncode == 2
    assert second.stderr.strip() == (f"error: PID {os.getpid()} is training in {run_dir}; wait for it to end, or choose "
                                     "another folder with hydra.run.dir=PATH")
    # The holder made the folder and wrote nothing into it: it is gone with the hold.
    assert not run_dir.exists()


def test_a_holder_killed_with_9_frees_its_folder_and_its_half_written_file_is_cleaned(tmp_path):
    data_dir = data_config(tmp_path, SHAKESPEARE).data_dir
    holder = subprocess.Popen([sys.executable, "-c", f"""
from lmzoo.files import atomic_write, hold_folder
with hold_folder({str(data_dir)!r}, "preparing", wait=True, fix=""):
    with atomic_write({str(data_dir / 'train.bin')!r}) as file:
        file.write(b"half a bin")
        file.flush()
        print("writing", flush=True)
        input()
"""], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline() == "writing\n"
    assert (data_dir / ".train.bin.partial").is_file()
    holder.send_signal(signal.SIGKILL)
    assert holder.wait() == -signal.SIGKILL
    meta = prepare(data_config(tmp_path, SHAKESPEARE), progress=False)
    assert read_meta(data_dir) == meta
    assert sorted(path.name for path in data_dir.iterdir()) == [".lmzoo.lock", "meta.json",
                                                                *sorted(f"{split}.bin" for split in SPLITS)]


def test_ctrl_c_while_a_prepare_waits_is_one_line(tmp_path):
    data_dir = data_config(tmp_path, SHAKESPEARE).data_dir
    with hold_folder(data_dir, "preparing", wait=True, fix=""):
        waiting = start("lmzoo.prepare", f"data.path={SHAKESPEARE}", f"paths.data_dir={tmp_path / 'data'}", cwd=tmp_path)
        wait_for_line(waiting, "waiting for PID")
        waiting.send_signal(signal.SIGINT)
        assert waiting.wait(timeout=60) == 130
    rest = waiting.stderr.read()
    assert rest.strip() == "error: stopped by Ctrl-C; files being written were discarded and earlier ones kept"
    assert sorted(path.name for path in data_dir.iterdir()) == [".lmzoo.lock"]
