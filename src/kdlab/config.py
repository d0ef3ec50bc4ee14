"""The run configuration: pydantic models of the YAML file. Unknown keys are errors (typos must not pass).

A config is a YAML path, a dict, or a ``RunConfig``; ``--set key.sub=value`` overrides are applied
to the raw mapping before validation, values parsed as YAML (``--set train.epochs=3``,
``--set method.epsilon=[0.1,0.2]``). Every problem becomes one ``ConfigError`` line naming the key.
"""

from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    TypeAdapter,
    ValidationError,
    model_validator,
)

from kdlab.config_compress import CompressConfig, PruneConfig, QuantizeConfig  # noqa: F401  (re-exported)
from kdlab.config_cooperative import CooperativeSections
from kdlab.config_pid import PIDTasks
from kdlab.errors import ConfigError
from kdlab.rl_config import RLSection


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class AugmentConfig(_Strict):
    crop_padding: int = Field(0, ge=0)
    hflip: bool = False
    # distillation inputs only (kdlab distill): the teacher labels the mixed / noisy inputs
    mixup_alpha: float = Field(0.0, ge=0)
    noise_std: float = Field(0.0, ge=0)

    @property
    def enabled(self) -> bool:
        return self.crop_padding > 0 or self.hflip or self.distill_only

    @property
    def distill_only(self) -> bool:
        return self.mixup_alpha > 0 or self.noise_std > 0


class DataConfig(_Strict):
    """``task: classify``: a named data set (digits, fashion_mnist, cifar10, npz, csv, ...) and its split."""

    name: str = "digits"
    path: str | None = None
    # csv: the user's own validation / test files (same columns); image_folder: use path/val/, path/test/
    val_path: str | None = None
    test_path: str | None = None
    image_size: int | None = Field(None, ge=1, description="image_folder: resize every image to this square")
    # standardise features with the training split's mean/std (saved as preprocess.json in the run); false: the
    # model sees the raw values (8-bit pixels scaled to [0, 1])
    standardize: bool = True
    # 0: no carve-out (a val_path, a source's own validation split, or none: then nothing is selected on it)
    val_fraction: float = Field(0.1, ge=0, lt=1)
    # the validation split is carved from train by this seed (default: the run's seed); give a student the
    # teacher's split seed so that the teacher never trained on the student's validation rows
    split_seed: int | None = None
    download: bool = True
    label_column: str | int = -1
    augment: AugmentConfig = AugmentConfig()


class TextDataConfig(_Strict):
    """``task: causal_lm``: text files or globs per split, the tokenizer and the block length."""

    name: Literal["text"] = "text"
    train: str | list[str] | None = None
    val: str | list[str] | None = None
    test: str | list[str] | None = None
    tokenizer: str = "bytes"
    block_size: int = Field(128, ge=2)


class TextClassifyDataConfig(_Strict):
    """``task: text_classify``: a table of texts (or text pairs) and labels (``kdlab.data.text_table``)."""

    name: Literal["text"] = "text"
    path: str  # a .csv/.tsv/.json/.jsonl/.parquet file, or a datasets save_to_disk directory (e.g. GLUE's)
    val_path: str | None = None
    test_path: str | None = None
    text_columns: list[str] | None = Field(None, min_length=1, max_length=2)  # default: found by name
    label_column: str = "label"
    val_fraction: float = Field(0.1, ge=0, lt=1)  # carved from train when the source has no validation split
    test_fraction: float = Field(0.1, ge=0, lt=1)  # carved from train when the source has no (labelled) test
    split_seed: int | None = None
    max_length: int = Field(128, ge=2)
    token_cache: str | None = None  # a directory: each model's tokenisation kept there, keyed by content


class ModelConfig(_Strict):
    name: str = "mlp"
    kwargs: dict[str, Any] = Field(default_factory=dict)


class NuisanceConfig(_Strict):
    """A nuisance teacher for robustness experiments (RID, docs/rid.md): ``untrained`` (the same network, weights
    initialised from ``seed`` instead of loaded) or ``noise_channels`` (the last ``fraction`` of the channels of every
    teacher feature a method taps replaced by N(0, std²) noise; its logits stay clean). ``nuisance: untrained``
    is short for ``{kind: untrained}``."""

    kind: Literal["untrained", "noise_channels"]
    fraction: float = Field(0.5, gt=0, le=1)
    std: float = Field(1.0, ge=0)
    seed: int = 0

    @model_validator(mode="before")
    @classmethod
    def _short(cls, value: Any) -> Any:
        return {"kind": value} if isinstance(value, str) else value


class TeacherConfig(_Strict):
    """A finished run directory (``run``), a model definition plus a safetensors file (``weights``), or an
    ``ensemble`` of such teachers (its logits: the log of the members' mean probability)."""

    run: str | None = None
    model: ModelConfig | None = None
    weights: str | None = None
    ensemble: list[TeacherConfig] | None = Field(None, min_length=2)
    checkpoint_epoch: int | None = Field(None, ge=1, description="the run's weights after this epoch (kept)")
    # the input a teacher from model + weights was trained on: standardised (kdlab's train statistics of this
    # data) or raw features; default: the same as the student's (data.standardize). A teacher run brings its own
    # preprocess.json and is fed exactly what it was trained on.
    standardize: bool | None = None
    # the teacher's accuracy on the validation split is measured before training; "warn"/"error" when it is near
    # chance or more than 5 points below expected_accuracy (or the teacher run's own validation accuracy)
    check: Literal["warn", "error", "off"] = "warn"
    expected_accuracy: float | None = Field(None, gt=0, le=1)
    # speed switches for the live teacher (kdlab.engine.speed; measured in benchmarks/results/peers.md)
    channels_last: bool = False
    precision: Literal["fp32", "bf16"] = "fp32"
    compile: bool = False
    quantize: Literal["none", "int8_dynamic"] = "none"  # int8 Linear layers (torchao), convolutions stay float
    # with any switch above on, the fast teacher's top-1 must agree with the exact fp32 teacher's on this share of
    # the validation rows (checked before training; agreement and KD loss between them go to summary.json)
    min_agreement: float = Field(0.99, ge=0, le=1)
    nuisance: NuisanceConfig | None = None  # an untrained or noise-carrying teacher, fingerprinted in its caches

    @model_validator(mode="after")
    def _one_source(self) -> TeacherConfig:
        explicit = self.model is not None or self.weights is not None
        if self.ensemble is not None:
            if self.run is not None or explicit or self.checkpoint_epoch is not None:
                raise ValueError("teacher.ensemble lists its members; give no run, model or weights beside it")
            return self
        own_weights = self.model is not None and "path" in self.model.kwargs  # a pretrained model directory
        if (self.run is not None) == explicit or (
            explicit and (self.model is None or not (self.weights or own_weights))
        ):
            raise ValueError(
                "give either teacher.run, or teacher.model and teacher.weights (or a model whose kwargs.path is a "
                "pretrained directory), or teacher.ensemble"
            )
        if self.checkpoint_epoch is not None and self.run is None:
            raise ValueError("teacher.checkpoint_epoch needs teacher.run (a run that kept that epoch)")
        if self.standardize is not None and self.run is not None:
            raise ValueError("teacher.standardize is for teacher.model + weights; a teacher run brings its own")
        return self


class OptimizerConfig(_Strict):
    name: Literal["sgd", "adamw"] = "sgd"
    lr: float = Field(0.05, gt=0)
    momentum: float = Field(0.9, ge=0)
    nesterov: bool = True
    weight_decay: float = Field(5e-4, ge=0)
    betas: tuple[float, float] = (0.9, 0.999)


class SchedulerConfig(_Strict):
    name: Literal["cosine", "step", "constant"] = "cosine"
    warmup_epochs: float = Field(0.0, ge=0)
    milestones: list[float] = Field(default_factory=list)
    gamma: float = Field(0.1, gt=0)
    min_lr_ratio: float = Field(0.0, ge=0, le=1)


class TrainConfig(_Strict):
    epochs: int = Field(10, ge=1)
    # per-epoch fidelity on a fixed, seeded subset of the training split (train_eval/* in metrics.jsonl); 0 = off
    train_eval_size: int = Field(2000, ge=0)
    batch_size: int = Field(128, ge=1)
    # False: an epoch's last, partial batch trains too (weighted per row); True: it is skipped
    drop_last: bool = False
    # text: batches of rows of similar length (less padding), each epoch's order still drawn from (seed, epoch)
    group_by_length: bool = False
    # evaluation's and the cache build's batch: 256, not larger, because a convolution's activations at 1024 rows
    # leave the CPU's cache (the CNN-32 teacher: 1,288 rows/s at 1024, 1,775 at 256; benchmarks/cache_build.py)
    eval_batch_size: int = Field(256, ge=1)
    # evaluate validation and train_eval (metrics.jsonl val/*, train_eval/*) after every N-th epoch; the last epoch
    # always. Evaluation is a fixed cost per epoch: on a tiny data set it can take longer than the training pass
    eval_every: int = Field(1, ge=1)
    grad_accum: int = Field(1, ge=1)
    mixed_precision: Literal["no", "bf16", "fp16"] = "no"
    max_grad_norm: float | None = Field(None, gt=0)
    checkpoint_every_steps: int | None = Field(None, ge=1)
    keep_epoch_checkpoints: list[int] = Field(default_factory=list)
    keep_checkpoints_every: int | None = Field(None, ge=1)
    log_every_steps: int = Field(50, ge=1)
    nan_policy: Literal["stop", "skip"] = "stop"
    cpu: bool = False
    # torch's intra-op CPU threads for this run (None: torch's default, one per core); on a busy machine fewer
    # threads than cores can be much faster (README, "Threads")
    threads: int | None = Field(None, ge=1)
    progress: bool = True
    # speed switches for the student's step (kdlab.engine.speed): channels-last layout, torch.compile
    channels_last: bool = False
    compile: bool = False
    pid_every: int = Field(0, ge=0)  # the PID of a layer pair over epochs -> <run>/pid.jsonl (kdlab.config_pid)
    pid_rows: int = Field(2000, ge=2)
    pid_clusters: int = Field(8, ge=2)
    pid_layers: list[str] | None = Field(None, min_length=2, max_length=2)
    optimizer: OptimizerConfig = OptimizerConfig()
    scheduler: SchedulerConfig = SchedulerConfig()

    def keeps_epoch(self, epoch: int) -> bool:
        """Whether the weights after ``epoch`` (1-based) are kept as checkpoints/epoch-<epoch>.safetensors."""
        every = self.keep_checkpoints_every
        return epoch in self.keep_epoch_checkpoints or (every is not None and epoch % every == 0)


class MethodConfig(BaseModel):
    """``name`` plus the method's own hyper-parameters (validated by the method's ``Params`` model)."""

    model_config = ConfigDict(extra="allow", allow_inf_nan=False)
    name: str = "ce"

    def params(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class CacheConfig(_Strict):
    use: Literal["auto", "never", "require"] = "auto"
    path: str | None = None
    topk: int | None = Field(None, ge=1)
    # classify: teacher submodules whose outputs kdlab cache-logits also stores (float16, every split), so that
    # feature methods (fitnets, vid) can read the cache instead of running the teacher
    features: list[str] = Field(default_factory=list)
    # classify: the teacher's batch while kdlab cache-logits builds the cache (default: train.eval_batch_size); no
    # student shares memory with it, and the cache holds the same logits at any batch (benchmarks/cache_build.py)
    batch_size: int | None = Field(None, ge=1)
    # causal_lm caches: classes drawn per token from the teacher's tail (outside the top k); they make the KD/PTLoss
    # loss an unbiased estimate of the dense one (kdlab.losses.sparse_teacher). Default: as many as keep a token
    # under 300 bytes (54 at k = 64 and 2,048 classes, 22 at 32,000). 0 = none drawn by cache-logits, none used by
    # distill (the rest-bucket loss)
    tail_samples: int | None = Field(None, ge=0)


class TrackingConfig(_Strict):
    tensorboard: bool = False
    mlflow: bool = False
    mlflow_uri: str | None = None


class RunBase(_Strict, PIDTasks):
    """The sections every task shares; each task's config adds its ``task`` tag and its own sections."""

    name: str = "run"
    out: str = "runs/run"
    seed: int = 0
    model: ModelConfig = ModelConfig()
    teacher: TeacherConfig | None = None
    method: MethodConfig = MethodConfig()
    train: TrainConfig = TrainConfig()
    cache: CacheConfig = CacheConfig()
    tracking: TrackingConfig = TrackingConfig()


class ClassifyConfig(RunBase):
    """``task: classify`` (the default): images/tabular rows → classes (``kdlab.tasks.classify``)."""

    task: Literal["classify"] = "classify"
    data: DataConfig = DataConfig()
    compress: CompressConfig | None = None

    @model_validator(mode="after")
    def _tail_samples_are_for_language_models(self) -> ClassifyConfig:
        if self.cache.tail_samples is not None:
            raise ValueError("cache.tail_samples is for task: causal_lm only")
        return self


class CausalLMConfig(RunBase):
    """``task: causal_lm``: next-token prediction with Hugging Face causal LMs (``kdlab.tasks.causal_lm``)."""

    task: Literal["causal_lm"]
    data: TextDataConfig = TextDataConfig()

    @model_validator(mode="after")
    def _single_teacher(self) -> CausalLMConfig:
        if self.teacher is not None and self.teacher.ensemble is not None:
            raise ValueError("teacher.ensemble is for task: classify; a causal LM distils from one teacher.run")
        if self.cache.features:
            raise ValueError("cache.features is for task: classify (a causal LM's cache holds top-k logits)")
        return self


class TextClassifyConfig(RunBase):
    """``task: text_classify``: texts → classes with Hugging Face sequence classifiers (``kdlab.tasks.text``)."""

    task: Literal["text_classify"]
    data: TextClassifyDataConfig

    @model_validator(mode="before")
    @classmethod
    def _adamw_by_default(cls, raw: Any) -> Any:
        """Transformers are fine-tuned with AdamW: it is this task's default optimizer (lr 5e-5, weight decay
        0.01) where the config names none; SGD stays available by naming it."""
        train = raw.get("train") if isinstance(raw, dict) else None
        if isinstance(raw, dict) and (train is None or isinstance(train, dict)) and "optimizer" not in (train or {}):
            optimizer = {"name": "adamw", "lr": 5e-5, "weight_decay": 0.01}
            raw = {**raw, "train": {**(train or {}), "optimizer": optimizer}}
        return raw


class RLConfig(RunBase):
    """``task: rl``: policies on Gymnasium environments (``kdlab.rl``; its section in ``kdlab.rl_config``)."""

    task: Literal["rl"]
    rl: RLSection = RLSection()


class CooperativeConfig(RunBase, CooperativeSections):
    """``task: cooperative``: learners of any kind teach each other (``kdlab.tasks.cooperative``)."""

    task: Literal["cooperative"]


TASK_CONFIGS: dict[str, type[RunBase]] = {
    "classify": ClassifyConfig,
    "causal_lm": CausalLMConfig,
    "text_classify": TextClassifyConfig,
    "rl": RLConfig,
    "cooperative": CooperativeConfig,
}


def _task_of(value: Any) -> str | None:
    task = value.get("task", "classify") if isinstance(value, dict) else getattr(value, "task", "classify")
    return task if task in TASK_CONFIGS else None


# The run configuration: one model per task, chosen by the ``task`` key (default classify); each validates only
# its own sections, so a causal-LM key in an image config (or the reverse) is an unknown key.
RunConfig = Annotated[
    Annotated[ClassifyConfig, Tag("classify")]
    | Annotated[CausalLMConfig, Tag("causal_lm")]
    | Annotated[TextClassifyConfig, Tag("text_classify")]
    | Annotated[RLConfig, Tag("rl")]
    | Annotated[CooperativeConfig, Tag("cooperative")],
    Discriminator(_task_of),
]
_RUN_CONFIG: TypeAdapter[RunConfig] = TypeAdapter(RunConfig)


def _set_path(tree: dict[str, Any], dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    node = tree
    for key in keys[:-1]:
        child = node.get(key)
        if child is None:
            child = node[key] = {}
        if not isinstance(child, dict):
            raise ConfigError(f"--set {dotted}: {key!r} is not a section")
        node = child
    node[keys[-1]] = value


def apply_overrides(raw: dict[str, Any], overrides: list[str] | None) -> dict[str, Any]:
    for item in overrides or []:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set expects key.sub=value, got {item!r}")
        try:
            value = yaml.safe_load(text) if text.strip() else None
        except yaml.YAMLError:
            value = text
        _set_path(raw, key.strip(), value)
    return raw


def _check_finite(node: Any, where: str = "") -> None:
    """NaN or infinity anywhere in a config (``alpha: .nan`` would silently drop a loss term) is one line."""
    if isinstance(node, dict):
        for key, value in node.items():
            _check_finite(value, f"{where}.{key}" if where else str(key))
    elif isinstance(node, list | tuple):
        for i, value in enumerate(node):
            _check_finite(value, f"{where}[{i}]")
    elif isinstance(node, float) and not math.isfinite(node):
        raise ConfigError(f"config: {where or 'config'}: must be a finite number (got {node!r})")


def _format_error(err: ValidationError) -> str:
    first = err.errors()[0]
    if first["type"] == "union_tag_not_found":
        got = first.get("input", {}).get("task") if isinstance(first.get("input"), dict) else None
        return f"config: task: unknown task {got!r}; available: {', '.join(TASK_CONFIGS)}"
    loc = first["loc"][1:] if first["loc"] and first["loc"][0] in TASK_CONFIGS else first["loc"]
    where = ".".join(str(p) for p in loc) or "config"
    if first["type"] == "extra_forbidden":
        return f"config: unknown key {where!r}"
    got = first.get("input")
    shown = "" if isinstance(got, dict) else f" (got {got!r})"
    more = f" (+{len(err.errors()) - 1} more)" if len(err.errors()) > 1 else ""
    message = first["msg"].removeprefix("Value error, ")  # a validator's own sentence
    return f"config: {message}{shown}{more}" if where == "config" else f"config: {where}: {message}{shown}{more}"


def load_config(source: str | Path | dict[str, Any] | RunBase, overrides: list[str] | None = None) -> RunConfig:
    """Read and validate a run configuration; raise ``ConfigError`` with one clear line on any problem."""
    if isinstance(source, RunBase):
        raw = source.model_dump(mode="json")
    elif isinstance(source, dict):
        raw = copy.deepcopy(source)  # overrides must not change the caller's nested mappings
    else:
        path = Path(source)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        try:
            raw = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as err:
            raise ConfigError(f"config file {path} is not valid YAML: {str(err).splitlines()[0]}") from None
        if not isinstance(raw, dict):
            raise ConfigError(f"config file {path} must contain a mapping at the top level")
    raw = apply_overrides(raw, overrides)
    _check_finite(raw)
    try:
        return _RUN_CONFIG.validate_python(raw)
    except ValidationError as err:
        raise ConfigError(_format_error(err)) from None


def dump_config(cfg: RunBase) -> str:
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
