"""Loading a frozen teacher: from a finished run directory, from a model definition plus weights, or an ensemble
of them (``ensemble``)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import yaml
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

from kdlab import models
from kdlab.config import ModelConfig, NuisanceConfig, TeacherConfig
from kdlab.data.preprocess import (
    PREPROCESS_FILE,
    Preprocess,
    attach_input_adapter,
    identity,
    input_adapter,
    load_preprocess,
)
from kdlab.errors import ConfigError


@dataclass
class TeacherSource:
    model_cfg: ModelConfig
    weights: Path | None  # None: the model loads its own (a pretrained directory in model.kwargs.path)
    directory: Path  # where a logit cache lives by default
    tag: str = ""  # distinguishes the caches of one run's kept epochs ("-epoch3")
    run_config: dict | None = None  # a teacher run's config.yaml, as written (its data split, seed, ...)
    # the input the teacher was trained on: a teacher run's preprocess.json, or the declared teacher.standardize
    # (True: this data's standardisation, False: raw features); None: the student's input, whatever it is
    preprocess: Preprocess | None = None
    standardize: bool | None = None
    nuisance: NuisanceConfig | None = None  # an untrained or noise-carrying teacher (kdlab.teacher.nuisance)

    @property
    def members(self) -> list[TeacherSource]:
        return [self]

    def describe(self) -> str:
        origin = f"{self.model_cfg.name} from {self.weights or self.model_cfg.kwargs.get('path')}"
        if self.nuisance is not None:
            from .nuisance import describe

            return f"{origin}, nuisance: {describe(self.nuisance)}"
        return origin

    def fingerprint(self) -> str:
        """The weights' SHA-256 — and the teacher's declared input, which changes its outputs on the same data
        (for a Hugging Face model: the files of the directories its kwargs name, its tokenizer's among them)."""
        digest = hashlib.sha256()
        if self.weights is not None:
            _hash_file(digest, self.weights)
        for key in ("path", "tokenizer"):
            directory = self.model_cfg.kwargs.get(key)
            if isinstance(directory, str) and Path(directory).is_dir():
                for file in model_files(Path(directory)):
                    digest.update(f"{key}/{file.name}".encode())
                    _hash_file(digest, file)
        if self.nuisance is not None:  # another teacher: its caches must not be the clean teacher's
            digest.update(f"nuisance:{self.nuisance.model_dump_json()}".encode())
        if self.preprocess is None and self.standardize is None:
            return digest.hexdigest()  # as before inputs were declared: old caches stay valid
        declared = self.preprocess.digest() if self.preprocess is not None else f"standardize={self.standardize}"
        digest.update(f"input:{declared}".encode())
        return digest.hexdigest()

    def input_for(self, data) -> Preprocess | None:
        """The preprocessing this teacher wants on ``data`` (a ``DataSplits``); None: the student's own."""
        if self.preprocess is not None:
            return self.preprocess
        if self.standardize is None or self.standardize == data.standardized:
            return None
        if not self.standardize:
            return identity(tuple(data.in_shape), scale=data.scale, per_channel=data.per_channel)
        from kdlab.data.splits import train_statistics

        mean, std = train_statistics(data)
        return Preprocess(data.scale, mean, std, data.per_channel, standardize=True)


MODEL_FILE_PATTERNS = ("config.json", "model*.safetensors", "pytorch_model*.bin", "tokenizer*", "vocab*",
                       "merges.txt", "special_tokens_map.json", "added_tokens.json", "*.model")  # fmt: skip


def model_files(directory: Path) -> list[Path]:
    """The files of a Hugging Face model directory that decide its outputs (not a logit cache kept beside them)."""
    found = {p for pattern in MODEL_FILE_PATTERNS for p in directory.glob(pattern) if p.is_file()}
    return sorted(found)


def _hash_file(digest, path: Path) -> None:
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)


def resolve_teacher(cfg: TeacherConfig):
    """The teacher's source: a ``TeacherSource``, or an ``EnsembleSource`` of them for ``teacher.ensemble``."""
    if cfg.ensemble is not None:
        from .ensemble import EnsembleSource

        return EnsembleSource([resolve_teacher(member) for member in cfg.ensemble])
    if cfg.run is not None:
        run = Path(cfg.run)
        config_file = run / "config.yaml"
        if not config_file.is_file():
            raise ConfigError(f"teacher.run: {run} is not a kdlab run directory (no config.yaml)")
        raw = yaml.safe_load(config_file.read_text()) or {}
        model_cfg = ModelConfig.model_validate(raw.get("model", {}))
        weights, tag = run / "model.safetensors", ""
        if cfg.checkpoint_epoch is not None:
            weights, tag = epoch_weights(run, cfg.checkpoint_epoch, raw), f"-epoch{cfg.checkpoint_epoch}"
        directory = run
        preprocess = load_preprocess(run / PREPROCESS_FILE) if (run / PREPROCESS_FILE).is_file() else None
    elif cfg.weights is None:  # a pretrained model directory that holds its own weights
        model_cfg, weights, raw, tag, preprocess = cfg.model, None, None, "", None
        directory = Path(str(cfg.model.kwargs["path"]))
        if not directory.is_dir():
            raise ConfigError(f"teacher model directory not found: {directory}")
    else:
        model_cfg, weights, raw, tag = cfg.model, Path(cfg.weights), None, ""
        directory, preprocess = weights.parent, None
    if weights is not None and not weights.is_file():
        hint = " (was the teacher run finished, and that epoch kept?)" if cfg.run else ""
        raise ConfigError(f"teacher weights not found: {weights}{hint}")
    return TeacherSource(
        model_cfg=model_cfg,
        weights=weights,
        directory=directory,
        tag=tag,
        run_config=raw,
        preprocess=preprocess,
        standardize=cfg.standardize,
        nuisance=cfg.nuisance,
    )


def kept_epochs(run: Path) -> list[int]:
    """The epochs whose weights a run kept (``train.keep_checkpoints_every`` / ``keep_epoch_checkpoints``)."""
    found = []
    for path in (run / "checkpoints").glob("epoch-*.safetensors"):
        number = path.name[len("epoch-") : -len(".safetensors")]
        if number.isdigit():
            found.append(int(number))
    return sorted(found)


def epoch_weights(run: Path, epoch: int, raw_config: dict) -> Path:
    """The teacher weights after ``epoch``; the final weights serve for the last epoch of a finished run."""
    path = run / "checkpoints" / f"epoch-{epoch}.safetensors"
    if path.is_file():
        return path
    last = (raw_config.get("train") or {}).get("epochs")
    if epoch == last and (run / "summary.json").is_file():
        return run / "model.safetensors"
    kept = kept_epochs(run)
    listed = ", ".join(map(str, kept)) if kept else "none"
    raise ConfigError(
        f"teacher.checkpoint_epoch={epoch}: run {run} did not keep that epoch (kept: {listed}; "
        "train it with train.keep_checkpoints_every or train.keep_epoch_checkpoints)"
    )


def _load_weights(teacher: nn.Module, source: TeacherSource) -> None:
    try:
        state = load_file(str(source.weights))
    except (SafetensorError, OSError) as err:
        raise ConfigError(f"teacher weights {source.weights} are unreadable: {err}") from None
    try:
        teacher.load_state_dict(state)
    except RuntimeError as err:
        first = str(err).splitlines()[0]
        raise ConfigError(
            f"teacher weights {source.weights} do not fit model {source.model_cfg.name!r}: {first}"
        ) from None


def load_teacher(source, num_classes: int, in_shape: tuple[int, ...], data=None) -> nn.Module:
    """The teacher in eval mode with gradients off (it is never trained, wrapped by DDP or checkpointed).

    With ``data`` (the ``DataSplits`` the student trains on), a teacher trained on other inputs (raw features,
    another split's statistics) gets an input adapter: it sees exactly the preprocessing it was trained with.
    """
    if not isinstance(source, TeacherSource):  # an ensemble: one module averaging its members' probabilities
        from .ensemble import EnsembleTeacher

        members = [load_teacher(member, num_classes, in_shape, data) for member in source.members]
        return EnsembleTeacher(members).eval().requires_grad_(False)

    def build() -> nn.Module:
        return models.create(source.model_cfg.name, num_classes, in_shape, **source.model_cfg.kwargs)

    nuisance = source.nuisance
    if nuisance is not None and nuisance.kind == "untrained":
        from .nuisance import untrained

        teacher = untrained(build, nuisance.seed)
    else:
        teacher = build()
        if source.weights is not None:
            _load_weights(teacher, source)
    if nuisance is not None and nuisance.kind == "noise_channels":
        from .nuisance import NoiseChannels

        teacher.feature_transform = NoiseChannels(nuisance.fraction, nuisance.std)  # read by the feature taps
    if data is not None and hasattr(teacher, "bind_input"):  # a model reading its own columns (text tokenizers)
        teacher.bind_input(data)
    wanted = source.input_for(data) if data is not None else None
    if wanted is not None:
        try:
            adapter = input_adapter(data.preprocess, wanted, tuple(in_shape))
        except (ValueError, RuntimeError) as err:
            raise ConfigError(f"teacher {source.describe()}: its input does not fit this data ({err})") from None
        teacher = attach_input_adapter(teacher, adapter)
    return teacher.eval().requires_grad_(False)
