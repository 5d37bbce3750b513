"""Pipeline configuration: one JSON file, validated into dataclasses."""
import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

from .errors import ConfigError


@dataclass(frozen=True)
class DataConfig:
    files: tuple = ("../shared/data/e2e/src1_valid.txt", "../shared/data/e2e/src1_test.txt")
    heldout_fraction: float = 0.1
    min_count: int = 2
    split_seed: int = 0
    max_lines: int = 0  # 0 = all lines; >0 reads only the first N of each file (tests)


@dataclass(frozen=True)
class ModelConfig:
    d: int = 16  # embedding dimension of the diffusion latent
    seq_len: int = 64
    hidden: int = 128
    layers: int = 4
    heads: int = 4
    ffn: int = 512
    dropout: float = 0.1
    # the denoiser also reads its previous x0_hat (zeros at the first step; Chen et al. 2022)
    self_condition: bool = False


@dataclass(frozen=True)
class DiffusionConfig:
    schedule: str = "sqrt"
    T: int = 2000


@dataclass(frozen=True)
class TrainConfig:
    steps: int = 20000
    batch_size: int = 64
    lr: float = 1e-3
    warmup: int = 500
    weight_decay: float = 0.0
    ema_rate: float = 0.999
    checkpoint_every: int = 500
    seed: int = 0
    threads: int = 0  # 0 = let PyTorch decide
    corpus: str = "real"  # "real" (the training split), "distilled" (distill.py's samples) or "mixed" (both)
    anchor: float = 0.0  # weight of the rounding cross entropy on x0_hat at every t (Difformer's anchor loss)
    init: str = ""  # start from these weights (a checkpoint.pt or a model's reference.pt), not at random


@dataclass(frozen=True)
class ControlsConfig:
    steps: int = 3000
    batch_size: int = 64
    lr: float = 1e-3
    hidden: int = 64
    layers: int = 2
    heads: int = 4
    seed: int = 0
    guide_batches: tuple = (1, 4, 16)  # the guidance graphs' fixed batch sizes; the runtime picks one per call and pads
    tree_steps: int = 0  # steps of the tree classifier (0: steps)


@dataclass(frozen=True)
class TeacherConfig:
    steps: int = 3000
    batch_size: int = 64
    lr: float = 1e-3
    hidden: int = 128
    layers: int = 2
    seed: int = 0


@dataclass(frozen=True)
class DistillConfig:
    sentences: int = 50000  # sampled from the teacher; the filtered ones are kept
    temperature: float = 0.8
    min_words: int = 4
    seed: int = 0


@dataclass(frozen=True)
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    controls: ControlsConfig = field(default_factory=ControlsConfig)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)

    def to_dict(self):
        return dataclasses.asdict(self)


def _build(cls, raw, where):
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected an object, got {type(raw).__name__}")
    known = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - set(known))
    if unknown:
        raise ConfigError(f"{where}: unknown keys {unknown}; allowed: {sorted(known)}")
    values = {}
    for name, value in raw.items():
        default = getattr(cls(), name)
        if isinstance(default, tuple):
            kind = type(default[0]) if default else str
            ok = isinstance(value, (list, tuple)) and all(isinstance(v, kind) and not isinstance(v, bool) for v in value)
            if not ok:
                raise ConfigError(f"{where}.{name}: expected a list of {kind.__name__}")
            value = tuple(value)
        elif isinstance(default, bool):
            if not isinstance(value, bool):
                raise ConfigError(f"{where}.{name}: expected true or false, got {value!r}")
        elif isinstance(value, bool) or not isinstance(value, type(default)):
            if not (isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool)):
                raise ConfigError(f"{where}.{name}: expected {type(default).__name__}, got {value!r}")
            value = float(value)
        values[name] = value
    return cls(**values)


def validate(cfg: Config):
    m, d, t, data = cfg.model, cfg.diffusion, cfg.train, cfg.data
    checks = [
        (0.0 < data.heldout_fraction < 1.0, "data.heldout_fraction must be in (0, 1)"),
        (data.min_count >= 1, "data.min_count must be >= 1"),
        (data.max_lines >= 0, "data.max_lines must be >= 0"),
        (len(data.files) > 0, "data.files must name at least one file"),
        (m.d >= 1 and m.seq_len >= 4, "model.d must be >= 1 and model.seq_len >= 4"),
        (m.hidden % m.heads == 0, "model.hidden must be divisible by model.heads"),
        (m.layers >= 1 and m.ffn >= 1, "model.layers and model.ffn must be >= 1"),
        (0.0 <= m.dropout < 1.0, "model.dropout must be in [0, 1)"),
        (d.schedule == "sqrt", "diffusion.schedule: only 'sqrt' is supported"),
        (d.T >= 2, "diffusion.T must be >= 2"),
        (t.steps >= 1 and t.batch_size >= 1, "train.steps and train.batch_size must be >= 1"),
        (t.lr > 0, "train.lr must be > 0"),
        (0.0 <= t.ema_rate < 1.0, "train.ema_rate must be in [0, 1)"),
        (t.checkpoint_every >= 1, "train.checkpoint_every must be >= 1"),
        (t.corpus in ("real", "distilled", "mixed"), "train.corpus must be 'real', 'distilled' or 'mixed'"),
        (t.anchor >= 0.0, "train.anchor must be >= 0"),
        (cfg.distill.sentences >= 1 and cfg.distill.min_words >= 1, "distill.sentences and distill.min_words must be >= 1"),
        (cfg.distill.temperature > 0.0, "distill.temperature must be > 0"),
        (cfg.controls.steps >= 1, "controls.steps must be >= 1"),
        (list(cfg.controls.guide_batches) == sorted(set(cfg.controls.guide_batches)) and cfg.controls.guide_batches
         and cfg.controls.guide_batches[0] >= 1, "controls.guide_batches must be increasing batch sizes >= 1"),
        (cfg.controls.hidden % cfg.controls.heads == 0, "controls.hidden must be divisible by controls.heads"),
    ]
    errors = [msg for ok, msg in checks if not ok]
    if errors:
        raise ConfigError("invalid config: " + "; ".join(errors))
    return cfg


def from_dict(raw, where="config"):
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected an object")
    sections = {"data": DataConfig, "model": ModelConfig, "diffusion": DiffusionConfig, "train": TrainConfig,
                "controls": ControlsConfig, "teacher": TeacherConfig, "distill": DistillConfig}
    unknown = sorted(set(raw) - set(sections))
    if unknown:
        raise ConfigError(f"{where}: unknown sections {unknown}; allowed: {sorted(sections)}")
    controls = raw.get("controls")
    if isinstance(controls, dict) and "guide_batch" in controls:  # saved when guidance had one batch size (models/e2e/controls.pt)
        controls = {k: v for k, v in controls.items() if k != "guide_batch"}
        raw = {**raw, "controls": {"guide_batches": [raw["controls"]["guide_batch"]], **controls}}
    parts = {k: _build(cls, raw.get(k, {}), f"{where}.{k}") for k, cls in sections.items()}
    return validate(Config(**parts))


def load(path):
    path = Path(path)
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path}: not valid JSON ({e})") from None
    return from_dict(raw, where=str(path))
