"""meta-train's settings, and the registry of learners: each learner's class carries its name,
label, default inner optimizer, the option groups that apply to it and its own checks, so the
rules here name no learner."""

from __future__ import annotations

from dataclasses import dataclass, fields

from .. import options
from ..data import tasks
from ..errors import UserError
from ..model import adapters, models
from ..options import option
from .distributed import World
from .abmll import ABMLL, AbmllOptions
from .fomaml import FOMAML
from .hyper import Hyper, HyperOptions
from .inner_config import OPTIMIZERS, InnerConfig, StepOptions
from .learner import Learner, OuterOptions
from .maml import MAML, LslrOptions, MamlOptions
from .metasgd import MetaSGD
from .reptile import Reptile, ReptileOptions
from .validation import ValidOptions

LEARNERS: dict[str, type[Learner]] = {}


def register(cls: type[Learner]) -> type[Learner]:
    """Make a learner a choice of --learner (and its starts' label known to compare)."""
    LEARNERS[cls.name] = cls
    return cls


for _cls in (Reptile, FOMAML, MAML, MetaSGD, Hyper, ABMLL):
    register(_cls)


@dataclass
class EpisodeOptions:
    learner: str = option("reptile", "the meta-learner: reptile (the paper), fomaml (first-order MAML, "
                                     "MeTA-LoRA's rule), maml (second order; README, \"Learners\"), meta-sgd "
                                     "(maml with a learned inner learning rate per element), hyper (maml from a "
                                     "start generated from the task's shots) or abmll (a Gaussian prior whose "
                                     "posterior each task refines)",
                          choices=LEARNERS.keys())  # a live view: a learner registered later is a choice too
    tasks: list[str] = option(list(tasks.DEFAULT_TASKS), "comma-separated task names or folders (mlx-reptilora tasks lists them)")
    task_weights: list[float] | None = option(None, "comma-separated sampling weights, one per task", min=0,
                                              default_text="uniform")
    episodes: int = option(500, "meta-training episodes (meta-steps)", min=1)
    meta_batch: int = option(1, "tasks adapted from the same start per episode", min=1)
    support: int = option(32, "support examples per task, k", min=1)
    query: int = option(128, "query examples per task, M: the loss after adaptation that fomaml and maml "
                             "train on; reptile only monitors it. Capped per task at what its split leaves", min=0)
    inner_steps: int = option(7, "inner steps per task, T", min=1)
    inner_lr: float | None = option(None, "inner learning rate", gt=0, max=1,
                                    default_text="5e-4 for adamw/adam0, 0.1 for sgd")
    inner_optimizer: str | None = option(None, "adamw | adam0 (Adam with beta1 = 0, as in Reptile) | sgd",
                                         choices=OPTIMIZERS, default_text="the learner's: adamw; sgd for maml, "
                                                                          "meta-sgd, hyper and abmll")
    inner_batch: int | None = option(None, "examples per inner step", min=1, default_text="the whole support set")


@dataclass
class MetaTrainConfig(models.ModelOptions, adapters.LoraOptions, AbmllOptions, HyperOptions, LslrOptions, MamlOptions, OuterOptions,
                      ReptileOptions, StepOptions, EpisodeOptions, ValidOptions):
    max_length: int = option(512, "max tokens per example; inputs are truncated, targets never", min=16,
                             aliases=("--max-seq-length",))
    train_cap: int = option(1000, "use at most this many training examples per task", min=1)
    seed: int = option(0, "seed of the episodes, dropout and the standard start", min=0)
    eval_every: int = option(10, "monitor the query loss before/after adaptation every N episodes; 0 = never",
                             min=0)
    checkpoint_every: int = option(50, "checkpoint every N episodes", min=1)
    keep_checkpoints: int = option(2, "checkpoints kept on disk", min=1)
    max_nonfinite: int = option(3, "stop after this many episodes in a row with a non-finite loss", min=1)
    out: str = option("runs/meta", "output folder")
    resume: bool = option(False, "continue the run in --out after a crash, kill or Ctrl-C")
    quiet: bool = option(False, "no progress output", short="-q")

    def __post_init__(self):
        # The inner optimizer and its learning rate default per learner: MAML needs plain SGD.
        if self.inner_optimizer is None:
            cls = LEARNERS.get(self.learner)
            self.inner_optimizer = cls.inner_optimizer if cls else "adamw"
        if self.inner_lr is None:
            self.inner_lr = 0.1 if self.inner_optimizer == "sgd" else 5e-4

    def inner(self) -> InnerConfig:
        return self.inner_config(self.inner_steps, self.inner_lr, self.inner_optimizer, batch=self.inner_batch)

    def learner_class(self) -> type[Learner]:
        return LEARNERS[self.learner]

    def validate(self) -> None:
        options.check(self)
        cls = self.learner_class()
        cls.check(self)
        for group in {g for c in LEARNERS.values() for g in c.options} - set(cls.options):
            for f in fields(group):
                if getattr(self, f.name) != options.default(f):
                    owners = " or ".join(c.name for c in LEARNERS.values() if group in c.options)
                    raise UserError(f"{_flag(f, getattr(self, f.name))} applies to --learner {owners}, not {cls.name}")
        if cls.trains_on_query and self.query < 1:
            raise UserError(f"--learner {self.learner} trains on the query loss after adaptation: --query must be >= 1")
        if self.task_weights is not None and sum(self.task_weights) <= 0:
            raise UserError("--task-weights must not all be 0")


def _flag(f, value) -> str:
    """The flag as a user would have set it: `--carry-optimizer` for reset_optimizer False."""
    flag = f.metadata.get("flag") or options.flag_name(f.name)
    if "/" in flag:
        on, off = flag.split("/")
        return on if value else off
    return flag


def make_learner(cfg: MetaTrainConfig, world: World | None = None) -> Learner:
    return cfg.learner_class()(cfg, cfg.episodes, world)


def label(described: dict | None, name: str | None) -> str:
    """The column name of a start made by learner `name` (what it recorded: `describe`)."""
    cls = LEARNERS.get(name or "")
    return cls.label_of(described or {}) if cls else "Meta start"
