"""The library internals lmzoo leans on (lmzoo.training.compat, lmzoo.cli.compat) still behave as relied on:
an upgrade of Lightning, lightning-utilities, torch or Hydra that changes one fails here, naming it."""

import contextlib
import importlib
import inspect
import re
import sys
import warnings
from unittest import mock

import lightning as L
import pytest
import torch
import torchmetrics.utilities.imports as torchmetrics_imports
from helpers import REPO, compose_config
from hydra._internal.callbacks import Callbacks
from hydra.core.utils import JobReturn, JobStatus, run_job
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext
from hydra.utils import instantiate
from hydra.errors import ConfigCompositionException, HydraException, InstantiationException, OverrideParseException
from lightning.pytorch.demos.boring_classes import BoringModel
from lightning.pytorch.loggers.logger import Logger
from lightning.pytorch.plugins.precision import MixedPrecision
from lightning_utilities.core.imports import RequirementCache
from omegaconf import OmegaConf

from lmzoo.cli.compat import (FAILED_JOB_LINE, WithoutFailedJobLines, failed_instantiation, flags_parser,
                              group_not_in_defaults, instantiated_section, is_ambiguous_value, job_error,
                              missing_argument, missing_key, missing_option, mode_not_probed, not_an_override,
                              raised_applying_override, raised_by_launcher, uncallable_target, unexpected_keyword)
from lmzoo.training.callbacks import ValidateAtEnd
from lmzoo.training.compat import LEAF_SPEC_WARNING, device_count, logs_this_step, lr_multiplier, packages_reported_missing


def test_packages_reported_missing_answers_for_the_requirement_caches_torchmetrics_checks():
    # torchmetrics decides with RequirementCache whether to import transformers and matplotlib.
    assert isinstance(torchmetrics_imports._TRANSFORMERS_AVAILABLE, RequirementCache)
    assert isinstance(torchmetrics_imports._MATPLOTLIB_AVAILABLE, RequirementCache)
    with packages_reported_missing(("torch",)):
        assert not RequirementCache("torch") and not RequirementCache("torch>=1.0")
        assert RequirementCache("numpy")
    assert RequirementCache("torch")


class StepsWritten(Logger):
    """The steps at which the Trainer writes logged values."""

    name, version, experiment = "steps", 0, None

    def __init__(self):
        super().__init__()
        self.steps = []

    def log_metrics(self, metrics, step=None):
        if any(key.startswith("seen/") for key in metrics):
            self.steps.append(step)

    def log_hyperparams(self, params, *args, **kwargs):
        pass


class LogsWhenTold(BoringModel):
    def __init__(self):
        super().__init__()
        self.answers = []

    def training_step(self, batch, batch_idx):
        before = logs_this_step(self.trainer)
        if before:
            self.log("seen/step", float(self.trainer.global_step))
        self.answers.append(("training_step", self.trainer.global_step, before))
        return super().training_step(batch, batch_idx)

    def on_train_batch_end(self, outputs, batch, batch_idx):
        self.answers.append(("batch_end", self.trainer.global_step, logs_this_step(self.trainer)))


def test_logs_this_step_is_when_lightning_writes_the_logs(tmp_path):
    model, written = LogsWhenTold(), StepsWritten()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        L.Trainer(max_steps=7, log_every_n_steps=3, accumulate_grad_batches=2, logger=written,
                  default_root_dir=tmp_path, enable_checkpointing=False, enable_progress_bar=False,
                  enable_model_summary=False, limit_val_batches=0, callbacks=[ValidateAtEnd()]).fit(model)
    # The deprecation lmzoo.training.compat silences is still raised in Lightning's loops.
    assert any(re.match(LEAF_SPEC_WARNING, str(warning.message)) for warning in caught)
    # Steps 3 and 6 of 7, and the last, 7, which ValidateAtEnd tells the run to stop after: global_step 2, 5 and 6
    # while they run.
    assert written.steps == [2, 5, 6]
    told = {step for hook, step, answer in model.answers if hook == "training_step" and answer}
    assert told == {2, 5, 6}
    # on_train_batch_end of a step's last micro-batch comes after its optimizer step: global_step has moved on.
    after = [(step, answer) for hook, step, answer in model.answers if hook == "batch_end"]
    assert [answer for _, answer in after] == [answer for hook, _, answer in model.answers if hook == "training_step"]


def test_lr_multiplier_is_the_lambdalr_object_and_its_state_is_checkpointed():
    class Multiplier:
        def __init__(self):
            self.decay = 5

        def __call__(self, step):
            return 1.0

    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, Multiplier())
    lr_multiplier(scheduler).decay = 13
    resumed = torch.optim.lr_scheduler.LambdaLR(optimizer, Multiplier())
    resumed.load_state_dict(scheduler.state_dict())
    assert lr_multiplier(resumed).decay == 13


def test_job_error_is_the_exception_of_a_failed_sweep_job():
    error = ValueError("bad")
    failed = JobReturn(status=JobStatus.FAILED, _return_value=error)
    assert job_error(failed) is error
    with pytest.raises(ValueError):
        failed.return_value


def test_the_line_hydra_writes_for_a_failed_job_is_the_one_left_out(capsys):
    failed = JobReturn(status=JobStatus.FAILED, _return_value=ValueError("bad"), overrides=["model=gpt"])
    with pytest.raises(ValueError):
        failed.return_value
    assert capsys.readouterr().err.startswith(f"{FAILED_JOB_LINE}['model=gpt']")
    filtered = WithoutFailedJobLines(sys.stderr)
    with pytest.raises(ValueError), contextlib.redirect_stderr(filtered):
        failed.return_value
    filtered.write("error: ours\n")
    assert capsys.readouterr().err == "error: ours\n"


def test_hydra_errors_recognised_by_their_wording_are_recognised():
    with pytest.raises(ConfigCompositionException) as missing_group:
        compose_config("evaluate", "ckpt=x", "tokenizer=gpt2")
    assert group_not_in_defaults(str(missing_group.value).splitlines()[0]) == "tokenizer"
    with pytest.raises(ConfigCompositionException) as ambiguous:
        compose_config("generate", "ckpt=x", "prompt=a b,c")
    assert is_ambiguous_value(str(ambiguous.value))
    assert group_not_in_defaults(str(ambiguous.value)) is None and not is_ambiguous_value("Could not override 'x'.")
    with pytest.raises(OverrideParseException) as no_equals:
        compose_config("generate", "ckpt=x", "gpt_rope")
    assert not_an_override(str(no_equals.value).splitlines()[0]) == "gpt_rope"
    assert not_an_override(str(ambiguous.value)) is None


def test_failed_instantiation_names_the_key_and_target_hydra_reports():
    with pytest.raises(InstantiationException) as failed:
        instantiate({"data": {"_target_": "lmzoo.data.tokenizer.tokenizer_from_spec", "nonsense": 1}})
    assert failed_instantiation(str(failed.value)) == ("data", "lmzoo.data.tokenizer.tokenizer_from_spec")
    assert failed_instantiation("Could not override 'x'.") is None


def test_a_target_that_imports_a_module_is_told_by_hydras_words():
    with pytest.raises(InstantiationException) as failed:
        instantiate({"data": {"_target_": "abc"}})
    assert uncallable_target(str(failed.value)) == "a module"
    assert instantiated_section(str(failed.value)) == "data"
    assert uncallable_target("Error locating target 'abc'") is None


def test_a_key_a_class_needs_is_named_by_the_error_of_its_call():
    """`~data.name` reaches DataConfig's call without its one required key, and Python's TypeError names it."""
    with pytest.raises(InstantiationException) as failed:
        instantiate({"data": {"_target_": "lmzoo.data.DataConfig"}})
    assert missing_argument(failed.value.__cause__) == "name"
    assert missing_argument(ValueError("missing 1 required keyword-only argument: 'name'")) is None


def test_a_key_a_class_does_not_take_is_named_by_the_error_of_its_call():
    """`+optim.betas=1` reaches OptimConfig's call, whose TypeError (Python's wording) names the key."""
    with pytest.raises(InstantiationException) as failed:
        instantiate(compose_config("train", "+optim.betas=1").optim)
    assert unexpected_keyword(failed.value.__cause__) == "betas"
    assert unexpected_keyword(ValueError("unexpected keyword argument 'betas'")) is None


def test_an_option_or_key_that_does_not_exist_is_told_by_the_attributes_of_its_error():
    with pytest.raises(HydraException) as option:
        compose_config("train", "model=gpt9")
    group, name, options = missing_option(option.value)
    assert (group, name) == ("model", "gpt9") and "gpt" in options and "gpt_rope" in options
    with pytest.raises(HydraException) as key:
        compose_config("train", "model.n_layr=2")
    section, name, keys = missing_key(key.value)
    assert (section, name) == ("model", "n_layr") and "n_layer" in keys
    with pytest.raises(HydraException) as top:
        compose_config("train", "n_layer=2")
    assert missing_key(top.value)[:2] == ("", "n_layer") and "block_size" in missing_key(top.value)[2]
    assert missing_option(key.value) is None and missing_key(option.value) is None


class Stopped(BaseException):
    """What run_job does not keep for later (it keeps Exceptions): it goes through run_job and the launch."""


class Launching(Launcher):
    """A launcher that refuses its settings when it starts, as joblib's does n_jobs=0, or runs its job as Hydra's
    launchers do, through run_job."""

    def __init__(self, refuse: bool):
        self.refuse = refuse

    def setup(self, **kwargs):
        pass

    def launch(self, job_overrides, initial_job_idx):
        if self.refuse:
            raise ValueError("n_jobs == 0 in Parallel has no meaning")

        def task(cfg):
            if "stop" in cfg:
                raise Stopped()
            raise ValueError("the job's own mistake")

        config = compose_config("describe", "ckpt=x", *job_overrides[0], return_hydra_config=True)
        return [run_job(task_function=task, config=config, job_dir_key="hydra.run.dir", job_subdir_key=None,
                        hydra_context=HydraContext(config_loader=None, callbacks=Callbacks()), configure_logging=False)]


def test_a_launchers_own_error_is_told_from_a_jobs():
    """A launcher's error comes from its launch; a job's is kept by run_job and raised again by the sweeper from
    JobReturn.return_value (tests/test_bad_input.py runs joblib's launcher with n_jobs=0)."""
    with pytest.raises(ValueError) as refused:
        Launching(refuse=True).launch([[]], 0)
    assert raised_by_launcher(refused.value)
    (job,) = Launching(refuse=False).launch([[]], 0)
    with pytest.raises(ValueError, match="the job's own mistake") as failed:
        job.return_value
    assert not raised_by_launcher(failed.value)
    with pytest.raises(Stopped) as stopped:
        Launching(refuse=False).launch([["+stop=1"]], 0)
    assert not raised_by_launcher(stopped.value)


def test_an_override_hydra_cannot_apply_is_told_from_other_errors():
    """hydra-core 1.3 applies a command line's overrides in ConfigLoaderImpl._apply_overrides_to_config, where
    OmegaConf's update raises a plain ValueError for a key into a list that is not an index."""
    from hydra._internal.config_loader_impl import ConfigLoaderImpl
    from hydra.core.override_parser.overrides_parser import OverridesParser

    config = OmegaConf.create({"stop": ["a"]})
    overrides = OverridesParser.create().parse_overrides(["++stop.name=x"])
    with pytest.raises(ValueError) as applying:
        ConfigLoaderImpl._apply_overrides_to_config(overrides, config)
    assert raised_applying_override(applying.value)
    with pytest.raises(ValueError) as elsewhere:
        int("name")
    assert not raised_applying_override(elsewhere.value)


def test_hydras_flags_are_parsed_by_the_parser_hydra_main_uses():
    parsed = flags_parser().parse_args(["--cfg", "job", "-m", "model=gpt"])
    assert (parsed.cfg, parsed.multirun, parsed.overrides) == ("job", True, ["model=gpt"])
    with pytest.raises(SystemExit):
        flags_parser().parse_args(["--cfg", "everything"])


COMMANDS = ("train", "generate", "evaluate", "describe", "export", "prepare", "tune")
EXPERIMENTS = sorted(path.stem for path in (REPO / "conf" / "experiment").glob("*.yaml"))


@pytest.mark.parametrize("overrides", [("train",), *(("train", f"experiment={name}") for name in EXPERIMENTS),
                                       *((name,) for name in COMMANDS[1:])])
def test_only_the_commands_that_declare_it_set_hydra_mode_so_the_others_skip_hydras_probe_of_it(overrides):
    """A command composes its config once, not twice, unless hydra_command(mode_in_config=True) (mode_not_probed):
    the probe's answer is None for every config but those."""
    name, *rest = overrides
    hydra = compose_config(name, *rest, return_hydra_config=True).hydra
    command = importlib.import_module(f"lmzoo.cli.{name}")
    (declared,) = [value.mode_in_config for value in vars(command).values() if hasattr(value, "mode_in_config")]
    assert (hydra.mode is not None) == declared == (name == "tune")


def test_hydra_get_mode_composes_to_read_the_mode_and_is_skipped_while_not_probed():
    """hydra-core 1.3's _run_hydra asks Hydra.get_mode, which composes; mode_not_probed answers None without it."""
    from hydra._internal.hydra import Hydra
    from hydra._internal.utils import _run_hydra

    assert "hydra.get_mode(" in inspect.getsource(_run_hydra)
    probed = mock.Mock()
    Hydra.get_mode(probed, config_name="generate", overrides=[])
    probed.compose_config.assert_called_once()
    with mode_not_probed():
        skipped = mock.Mock()
        assert Hydra.get_mode(skipped, config_name="generate", overrides=[]) is None
        skipped.compose_config.assert_not_called()
    Hydra.get_mode(probed, config_name="generate", overrides=[])
    assert probed.compose_config.call_count == 2


@pytest.mark.parametrize(("accelerator", "devices", "num_nodes"),
                         [("cpu", 1, 1), ("cpu", 2, 1), ("auto", "auto", 1), ("cpu", "3", 1), ("cpu", 2, 2)])
def test_device_count_is_the_trainers(accelerator, devices, num_nodes):
    trainer = L.Trainer(accelerator=accelerator, devices=devices, num_nodes=num_nodes, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    assert device_count(accelerator, devices, num_nodes) == trainer.num_devices * trainer.num_nodes


def test_lightnings_mixed_precision_still_refuses_to_clip_for_a_fused_adamw_in_bf16():
    """Why LitLM.configure_gradient_clipping clips itself where no gradient scaler is involved (Lightning 2.6):
    once Lightning clips for an optimizer that unscales in its step when nothing is scaled, the hook can go."""
    optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.ones(2))], fused=True)
    with pytest.raises(RuntimeError, match="does not allow for gradient clipping"):
        MixedPrecision("bf16-mixed", "cpu").clip_gradients(optimizer, 1.0)
