"""GPT-2 weights in from Hugging Face, models out to transformers, each proven equal on CPU in fp32."""

import ast
import contextlib
import errno
import importlib
import resource
import signal
import subprocess
import sys

import pytest
import torch
from helpers import REPO, SHAKESPEARE, compose_train, make, run

from lmzoo.checkpoints import load_model, model_card
from lmzoo.checkpoints import export, folder
from lmzoo.checkpoints.export import export_checkpoint
from lmzoo.checkpoints.folder import save_folder
from lmzoo.checkpoints.hf_tokenizer import save_tokenizer
from lmzoo.data import BPETokenizer, CharTokenizer, TiktokenTokenizer
from lmzoo.errors import UserError
from lmzoo.inference.sampling import SamplingSettings, generate
from lmzoo.models import TransformerConfig
from lmzoo.models.base import SequenceMixer
from lmzoo.training.run import train

transformers = pytest.importorskip("transformers")

CHARS = "\n !',.:;?abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"


@pytest.fixture(scope="module", params=[True, False], ids=["tied", "untied"])
def hf_gpt2(request, tmp_path_factory):
    """A tiny random Hugging Face GPT-2 (2 layers, width 32), tied as GPT-2 is or untied, saved as a local folder."""
    torch.manual_seed(0)
    config = transformers.GPT2Config(n_layer=2, n_embd=32, n_head=2, n_positions=64, tie_word_embeddings=request.param)
    model = transformers.GPT2LMHeadModel(config).eval()
    randomize(model)
    folder = tmp_path_factory.mktemp("hf") / "gpt2"
    model.save_pretrained(folder)
    return model, folder


def randomize(model):
    """Move every weight off its init (norms 1, biases 0) so that a misplaced tensor shows in the logits."""
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.1 * torch.randn_like(parameter))


def test_gpt2_from_hugging_face_gives_its_logits(hf_gpt2):
    hf_model, folder = hf_gpt2
    model, tokenizer, info = load_model(folder)
    assert type(model.config) is TransformerConfig and model.config.positions == "learned"
    assert model.block_size == 64 and model.vocab_size == 50257
    assert model.config.tie_embeddings == hf_model.config.tie_word_embeddings
    assert tokenizer.spec == {"kind": "tiktoken", "name": "gpt2"}
    # Its card says where the weights came from, having no steps or validation loss of its own.
    assert model_card(model, info).endswith(f"tiktoken gpt2 | weights from {folder}")
    idx = torch.randint(0, 50257, (2, 24))
    with torch.no_grad():
        torch.testing.assert_close(model(idx).logits, hf_model(idx).logits, atol=1e-5, rtol=0)


def test_training_continues_from_hugging_face_gpt2(tmp_path, hf_gpt2):
    hf_model, folder = hf_gpt2
    cfg = compose_train(tmp_path, f"init_from={folder}", "model=gpt", "data=shakespeare", "trainer.max_steps=2",
                        "trainer.val_check_interval=2", "optim=finetune")
    result = train(cfg)
    model, _, info = load_model(result["best_checkpoint"])
    assert info.config["n_layer"] == 2 and model.block_size == 64 and info.global_step == 2
    # The weights' tie wins over the preset's default (untied): GPT-2 stays tied, sharing one matrix.
    tied = hf_model.config.tie_word_embeddings
    assert model.config.tie_embeddings == tied
    assert (model.lm_head.weight is model.transformer.wte.weight) == tied


SHAPE = dict(vocab_size=len(CHARS), block_size=32, n_layer=2, n_embd=32)
# What each mixer's Hugging Face layout declares it covers (HFLayout.examples): settings at SHAPE and the transformers
# class they export as (None: an lmzoo folder). The greedy texts below run past a local layer's window, so its
# caches slide on both sides.
# Named after the first mixer that declares the layout (the attention's serves both its mixers).
LAYOUTS = {id(mixer.hf): (name, mixer.hf) for name, mixer in reversed(SequenceMixer.registry.items())
           if mixer.hf is not None}
EXAMPLES = {f"{mixer}:{name}": example for mixer, layout in LAYOUTS.values() for name, example in layout.examples.items()}
EXPORTS = {name: example for name, example in EXAMPLES.items() if example[1] is not None}
NO_CLASS = {name: settings for name, (settings, hf_class) in EXAMPLES.items() if hf_class is None}


@pytest.mark.parametrize("name", sorted(EXPORTS))
def test_export_gives_the_same_logits_and_greedy_text_in_transformers_and_back_in_lmzoo(tmp_path, name):
    torch.manual_seed(0)
    settings, hf_class = EXPORTS[name]
    model = TransformerConfig(**{**SHAPE, **settings}).build().eval()
    randomize(model)
    save_folder(model, {"kind": "char", "chars": CHARS}, tmp_path / "lmzoo")
    export_checkpoint(str(tmp_path / "lmzoo"), str(tmp_path / "hf"))

    hf_model = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    assert type(hf_model).__name__ == hf_class
    shared = hf_model.get_output_embeddings().weight is hf_model.get_input_embeddings().weight
    assert shared == model.config.tie_embeddings
    idx = torch.randint(0, len(CHARS), (2, 32))
    with torch.no_grad():
        torch.testing.assert_close(hf_model(idx).logits, model(idx).logits, atol=1e-5, rtol=0)
        prompt = idx[:, :4]
        ours = torch.stack(list(generate(model, prompt, SamplingSettings(max_new_tokens=20, temperature=0))), dim=1)
        theirs = hf_model.generate(prompt, attention_mask=torch.ones_like(prompt), do_sample=False,
                                   max_new_tokens=20, min_new_tokens=20, pad_token_id=0)
    assert torch.equal(theirs[:, 4:], ours)
    # lmzoo loads what it exported (a char GPT-2 and a Llama alike) as the model it was.
    reloaded, tokenizer, info = load_model(tmp_path / "hf")
    assert reloaded.config == model.config and tokenizer.spec == {"kind": "char", "chars": CHARS}
    with torch.no_grad():
        torch.testing.assert_close(reloaded(idx).logits, model(idx).logits, atol=1e-6, rtol=0)


@pytest.mark.parametrize("tokenizer", [
    CharTokenizer(CHARS),
    TiktokenTokenizer("gpt2"),
    # cl100k_base leaves a gap between its ranks and its special tokens; converting it takes about 10 s.
    pytest.param(TiktokenTokenizer("cl100k_base"), marks=pytest.mark.slow),
    BPETokenizer.train(iter([SHAKESPEARE.read_text()[:20000]]), vocab_size=400),
], ids=lambda t: t.spec.get("name", t.spec["kind"]))
def test_exported_tokenizer_encodes_and_decodes_like_lmzoo(tmp_path, tokenizer):
    save_tokenizer(tokenizer, tmp_path)
    exported = transformers.AutoTokenizer.from_pretrained(tmp_path)
    text = "First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:  Speak, speak."
    if tokenizer.eot_id is not None:
        text = SHAKESPEARE.read_text()[:3000] + "<|endoftext|> 12345 \u00e9t\u00e9 \u4f60\u597d  \n"
        assert exported.eos_token_id == tokenizer.eot_id
    ids = tokenizer.encode(text)
    assert exported.encode(text) == ids and exported.decode(ids) == text


@pytest.mark.parametrize("name", NO_CLASS)
def test_options_without_a_transformers_class_export_lmzoo_safetensors(tmp_path, name):
    """The presets export in tests/test_zoo.py; these are options no preset combines."""
    torch.manual_seed(0)
    model = TransformerConfig(**{**SHAPE, "vocab_size": 70, **NO_CLASS[name]}).build().eval()
    spec = {"kind": "char", "chars": "".join(chr(48 + i) for i in range(model.vocab_size))}
    save_folder(model, spec, tmp_path / "source")
    message = export_checkpoint(str(tmp_path / "source"), str(tmp_path / "out"))
    assert f"{type(model).__name__} in these options has no transformers class" in message
    assert {p.name for p in (tmp_path / "out").iterdir()} == {"model.safetensors", "lmzoo.json"}
    reloaded, tokenizer, _ = load_model(tmp_path / "out")
    idx = torch.randint(0, model.vocab_size, (1, 16))
    assert type(reloaded) is type(model) and tokenizer.spec == spec
    assert torch.equal(reloaded(idx).logits, model(idx).logits)


def test_a_trained_gpt_rope_exported_as_llama_samples_evaluates_and_trains_on_in_lmzoo(tmp_path):
    best = train(compose_train(tmp_path / "first", "trainer.max_steps=4", "trainer.val_check_interval=4"))["best_checkpoint"]
    export_checkpoint(best, str(tmp_path / "llama"))
    model, _, info = load_model(best)
    exported, _, exported_info = load_model(tmp_path / "llama")
    idx = torch.randint(0, model.vocab_size, (2, 32))
    with torch.no_grad():
        torch.testing.assert_close(exported(idx).logits, model(idx).logits, atol=1e-6, rtol=0)
    assert model_card(exported, exported_info) == model_card(model, info)
    result = train(compose_train(tmp_path / "second", f"init_from={tmp_path / 'llama'}", "trainer.max_steps=2",
                                 "trainer.val_check_interval=2"))
    assert result["steps"] == 2


def test_export_refuses_to_write_into_a_folder_with_files(tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "notes.txt").write_text("keep me")
    with pytest.raises(UserError, match="is not an empty folder"):
        export_checkpoint("hf:gpt2", str(tmp_path / "out"))
    assert (tmp_path / "out" / "notes.txt").read_text() == "keep me"


@pytest.mark.parametrize("name", ["gpt_rope", "mlp"])
def test_export_on_a_full_disk_is_one_line_and_leaves_no_folder(tmp_path, monkeypatch, name):
    """Into Llama's files or lmzoo's own; the disk fills up at the last file, after the weights."""
    model = make(name)
    spec = {"kind": "char", "chars": "".join(chr(48 + i) for i in range(model.vocab_size))}
    save_folder(model, spec, tmp_path / "source")
    # A killed export left its partial folder: the next one starts over.
    (tmp_path / ".out.partial").mkdir()
    (tmp_path / ".out.partial" / "config.json").write_text("{")

    def disk_full(model, tokenizer_spec, out, trained=None):
        (out / "lmzoo.json").write_text("{")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(export, "write_record", disk_full)
    monkeypatch.setattr(folder, "write_record", disk_full)
    with pytest.raises(UserError, match=f"^cannot write {tmp_path / 'out'} \\(No space left on device\\); pass out="):
        export_checkpoint(str(tmp_path / "source"), str(tmp_path / "out"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["source"]
    monkeypatch.undo()
    export_checkpoint(str(tmp_path / "source"), str(tmp_path / "out"))
    assert load_model(tmp_path / "out")[2].weights_sha256 and sorted(p.name for p in tmp_path.iterdir()) == ["out", "source"]


@pytest.mark.parametrize("name", ["gpt_rope", "mlp"])
def test_export_past_what_the_disk_takes_is_one_line_from_the_writers_own_error(tmp_path, name):
    """A write that really fails, inside safetensors (lmzoo's folder) or transformers (Llama's files): a limit on the
    size of a file fails every write past it (EFBIG) as a full disk fails them (ENOSPC)."""
    model = make(name)
    spec = {"kind": "char", "chars": "".join(chr(48 + i) for i in range(model.vocab_size))}
    save_folder(model, spec, tmp_path / "source")

    def at_most_4_kb_a_file():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))

    result = subprocess.run([sys.executable, "-m", "lmzoo.export", f"ckpt={tmp_path / 'source'}",
                             f"out={tmp_path / 'out'}"], cwd=tmp_path, capture_output=True, text=True,
                            preexec_fn=at_most_4_kb_a_file)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert result.stderr.splitlines()[-1] == (f"error: cannot write {tmp_path / 'out'} (File too large); pass out= a "
                                              "writable new folder, or free disk space")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["source"]


def test_export_command(tmp_path):
    model = TransformerConfig(vocab_size=len(CHARS), block_size=16, n_layer=1, n_head=2, n_embd=16).build()
    save_folder(model, {"kind": "char", "chars": CHARS}, tmp_path / "source")
    result = run("lmzoo.export", f"ckpt={tmp_path / 'source'}", "out=exported", cwd=tmp_path, check=False)
    assert result.returncode == 0, result.stderr
    assert "wrote LlamaForCausalLM (character tokenizer) to exported" in result.stdout
    assert {"config.json", "generation_config.json", "model.safetensors", "tokenizer.json"} <= {
        p.name for p in (tmp_path / "exported").iterdir()}


def test_hub_name_offline_says_to_pass_a_local_folder():
    with pytest.raises(UserError, match="offline, pass a local folder holding its config.json and model.safetensors"):
        load_model("hf:no-such-model-here")


def test_lmzoo_imports_hugging_face_packages_only_inside_interop_functions():
    # A module-level import would make them a dependency of training and sampling. (Lightning's torchmetrics
    # imports transformers by itself when it is installed, so sys.modules cannot tell.)
    optional = {"transformers", "safetensors", "tokenizers", "huggingface_hub"}
    for path in sorted((REPO / "src" / "lmzoo").rglob("*.py")):
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.Import):
                names = {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom):
                names = {(node.module or "").split(".")[0]}
            else:
                continue
            assert not names & optional, f"{path.name} imports {names & optional} at module level"


def test_generate_samples_from_an_exported_attention_variant(tmp_path, monkeypatch, capsys):
    """`python -m lmzoo.generate ckpt=FOLDER` on the DeepseekV3ForCausalLM folder of a latent-attention model,
    in this process."""
    torch.manual_seed(0)
    settings = next(settings for settings, hf_class in EXPORTS.values() if hf_class == "DeepseekV3ForCausalLM")
    model = TransformerConfig(**{**SHAPE, **settings}).build().eval()
    with torch.no_grad():
        for parameter in model.parameters():  # far off the init, so that the greedy text varies
            parameter.normal_(0.0, 0.5)
    save_folder(model, {"kind": "char", "chars": CHARS}, tmp_path / "lmzoo")
    export_checkpoint(str(tmp_path / "lmzoo"), str(tmp_path / "hf"))
    monkeypatch.setattr(sys, "argv", ["lmzoo.generate", f"ckpt={tmp_path / 'hf'}", "prompt=ab", "max_new_tokens=8",
                                      "temperature=0"])
    with contextlib.suppress(SystemExit):
        importlib.import_module("lmzoo.generate").main()
    settings = SamplingSettings(max_new_tokens=8, temperature=0)
    expected = "".join(CHARS[int(t)] for t in generate(model, [[CHARS.index("a"), CHARS.index("b")]], settings))
    assert "ab" + expected in capsys.readouterr().out
