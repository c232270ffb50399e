"""The settings of a GO-Diff run, nested by concern, with one key namespace.

`SearchConfig` holds `n_iterations` and five sections: `sampler` (the reverse SDE and the
distance filter), `buffer` (archive, temperature, buffer draw), `training` (the optimizer
and the weighted-DSM loss), `model` (the score model, `ScoreModelConfig`) and `guidance`
(force-field guidance). Every field
has a dotted name (`sampler.n_samples`, `model.features`) and, because leaf names are
unique, a flat alias (`n_samples`, `features`): `--set`, `make_config`, `replace` and a
run directory's config.json accept either, so the flat names used in RESULTS.md commands
and older run directories keep working. The defaults are the paper's heptamer settings.
"""

from __future__ import annotations

import dataclasses
import difflib
import typing
from typing import Any

import numpy as np

from godiff_jax.model import ScoreModelConfig
from godiff_jax.schedule import check_spread, exponential_kT
from godiff_jax.sde import VESDE
from godiff_jax.train import StopRule


@dataclasses.dataclass(frozen=True)
class SamplerConfig:
    """Reverse-time sampling and what happens to a sample before it is evaluated."""

    n_samples: int = 128  # structures sampled and evaluated per iteration
    n_reverse_steps: int = 500
    t_end: float = 0.005
    sigma_min: float = 0.01  # Å, the VE-SDE (also the training noise)
    sigma_max: float = 1.0  # Å
    min_distance: float = 1.0  # Å; closer pairs are discarded before evaluation
    reverse_truncated_z: bool = False  # reverse-step noise truncated to the box, then clamp
    # Refinement: this share of each iteration's samples starts not from the prior but from
    # the refine_pool lowest structures archived so far (cycled), noised to the forward
    # marginal at refine_t0 and denoised from there (SDEdit): the model's own moves around
    # the best structures found (none in the first iteration; 0: off, the paper's; the
    # default settings refine half: on the heptamer 31/32 seeds against 15/32, RESULTS §61).
    refine_fraction: float = 0.0
    refine_t0: float = 1.0
    refine_pool: int = 16
    # ESS-driven sampling (issue 16, `godiff_jax.ess`): chunks of ess_chunk structures until
    # their ESS at the last kT reaches ess_target (n_samples is then the most per iteration,
    # ess_first the first iteration's count); the run ends after max_evaluations, and
    # n_iterations only caps the iterations (and sizes the archive).
    ess_target: float | None = None
    ess_chunk: int = 16
    ess_first: int = 32
    max_evaluations: int | None = None

    def __post_init__(self):
        if not 0.0 <= self.refine_fraction <= 1.0:
            raise ValueError(f"refine_fraction must lie in [0, 1], got {self.refine_fraction}")
        if not 0.0 < self.refine_t0 <= 1.0:
            raise ValueError(f"refine_t0 must lie in (0, 1], got {self.refine_t0}")
        if self.refine_pool < 1:
            raise ValueError(f"refine_pool must be at least 1, got {self.refine_pool}")
        if self.ess_target is None:
            return
        if self.max_evaluations is None or self.max_evaluations < 1:
            raise ValueError("ess_target needs max_evaluations, the run's evaluation budget")
        for name in ("n_samples", "ess_first"):
            if getattr(self, name) % self.ess_chunk or getattr(self, name) < self.ess_chunk:
                raise ValueError(
                    f"{name} ({getattr(self, name)}) must be a multiple of ess_chunk "
                    f"({self.ess_chunk})"
                )
        if self.ess_first > self.n_samples:
            raise ValueError(f"ess_first {self.ess_first} exceeds n_samples {self.n_samples}")


@dataclasses.dataclass(frozen=True)
class BufferConfig:
    """The archive of evaluated structures, the temperature, and the training buffer."""

    buffer_size: int = 64
    kT_start: float = 5.0  # eV
    kT_end: float = 0.02  # eV
    # iterations the fixed schedule cools over; the later ones stay at kT_end (0: all); the
    # default cools over half (DEFAULT_SETTINGS), and `replace(n_iterations=...)` keeps the share
    kT_anneal_iterations: int = 0
    # kT is raised to where the archive's Boltzmann weights keep this ESS (None: never), so
    # that a cold schedule does not train on one structure, never above kT_start
    # (`ess.ess_temperature`)
    kT_ess_floor: float | None = None
    energy_floor: float | None = None  # eV; lower energies are masked (ML-potential holes)
    # The loss weights of the buffer drawn at kT: "boltzmann" (at kT, the paper's) or
    # "uniform" (every structure drawn counts the same: the draw alone selects, so a cold
    # buffer is the lowest structures found, trained on alike rather than on the one lowest;
    # on the heptamer it never assembled an island, RESULTS.md section 44)
    loss_weights: str = "boltzmann"
    adaptive_kT: bool = False  # kT_0 = std(E) of the first samples, then x0.95 / x0.5
    kT_hot_factor: float = 0.95  # while the heat capacity Var(E) / kT^2 exceeds 1
    kT_cold_factor: float = 0.5  # once it does not
    kT_spread: str = "std"  # Var(E) of the adaptive kT: "std", or "iqr" (robust to outliers)

    # ESS-sized buffer (issue 16, `godiff_jax.ess.buffer_size`): buffer_size is replaced by
    # clip(ess_buffer_factor x an exponential average of the ESS of the archive's weights).
    ess_buffer: bool = False
    ess_buffer_factor: float = 1.0
    ess_buffer_decay: float = 0.8
    ess_buffer_min: int = 16
    ess_buffer_max: int = 512

    def __post_init__(self):
        check_spread(self.kT_spread, "kT_spread")
        if self.loss_weights not in ("boltzmann", "uniform"):
            raise ValueError(f"loss_weights: 'boltzmann' or 'uniform', got {self.loss_weights!r}")
        k = self.kT_anneal_iterations
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
            raise ValueError(f"kT_anneal_iterations must be an integer, got {k!r}")
        floor = self.kT_ess_floor
        if floor is not None and not (np.isfinite(floor) and floor >= 1):
            raise ValueError(f"kT_ess_floor must be a finite ESS of at least 1, got {floor}")
        if self.ess_buffer and not 1 <= self.ess_buffer_min <= self.ess_buffer_max:
            raise ValueError(
                f"need 1 <= ess_buffer_min <= ess_buffer_max, got "
                f"{self.ess_buffer_min}, {self.ess_buffer_max}"
            )


@dataclasses.dataclass(frozen=True)
class TrainingConfig:
    """Optimizer steps on the buffer with the Boltzmann-weighted score-matching loss."""

    train_steps: int = 8000  # optimizer steps per iteration (2000 epochs of 64 / 16)
    batch_size: int = 16
    learning_rate: float = 1e-4
    weight_decay: float = 0.01
    clip_norm: float = 10.0
    plateau_factor: float = 0.95
    plateau_patience: int = 100  # epochs
    reset_plateau_each_iteration: bool = True  # as the reference's per-iteration `fit`
    score_convention: str = "reference"  # or "textbook" (loss.dsm_error)
    # The reference's choices (issue 8; the "reference" preset turns all of them on):
    truncated_noise: bool = False  # training noise truncated to the box in z (TruncatedNormal)
    loss_normalisation: str = "mobile"  # or "all_atoms": per-atom mean over template too
    fresh_optimizer: bool = False  # new AdamW + plateau state every iteration (Lightning `fit`)
    holdout_fraction: float = 0.0  # buffer share held out; its loss drives the plateau
    # Train on each buffer structure moved one step down its evaluated forces, x + polish_step
    # F (Å^2/eV; 0: off; 1/70 is ASE's initial inverse curvature), each atom at most
    # polish_max_step Å (`buffer.polish_buffer`): no extra evaluations. Off: on the heptamer
    # it lowered the best energy found and the successes (RESULTS.md section 43).
    polish_step: float = 0.0
    polish_max_step: float = 0.1
    # The momentum-consensus stop of go-diff 1.1.0 (issue 16); train_steps becomes the cap.
    train_stop: bool = False
    stop_warmup: int = 50
    stop_patience: int = 100
    stop_fraction: float = 0.5

    def __post_init__(self):
        if self.score_convention not in ("reference", "textbook"):
            raise ValueError(
                f"score_convention: 'reference' or 'textbook', got {self.score_convention!r}"
            )
        if self.loss_normalisation not in ("mobile", "all_atoms"):
            raise ValueError(
                f"loss_normalisation: 'mobile' or 'all_atoms', got {self.loss_normalisation!r}"
            )
        if not 0.0 <= self.holdout_fraction < 1.0:
            raise ValueError(f"holdout_fraction must lie in [0, 1), got {self.holdout_fraction}")
        if not (np.isfinite(self.polish_step) and self.polish_step >= 0):
            raise ValueError(f"polish_step must be finite and >= 0, got {self.polish_step}")
        if not (np.isfinite(self.polish_max_step) and self.polish_max_step > 0):
            raise ValueError(f"polish_max_step must be finite and > 0, got {self.polish_max_step}")

    @property
    def stop_rule(self) -> StopRule | None:
        if not self.train_stop:
            return None
        return StopRule(self.stop_warmup, self.stop_patience, self.stop_fraction)


@dataclasses.dataclass(frozen=True)
class GuidanceConfig:
    """Force-field guidance (paper eq. 7; `godiff_jax.guidance`): a force head trained on
    every evaluated structure and an L-BFGS corrector after each reverse step."""

    ffg: bool = False
    ffg_scale: float = 0.2  # a = ffg_scale * dt (ffg_per_dt) or ffg_scale
    ffg_per_dt: bool = True
    ffg_zeta: float = 3.0  # dx = a (1 - t)^zeta d
    ffg_memory: int = 10  # L-BFGS curvature pairs kept per structure
    ffg_max_step: float = 0.1  # Å, longest corrector step of one atom
    ffg_h0: float = 1.0 / 70.0  # Å^2/eV, inverse curvature before the first pair (ASE's LBFGS)
    force_train_steps: int | None = None  # None: training.train_steps
    force_clip: float | None = 10.0  # eV/Å, per-atom force targets capped at this norm

    def __post_init__(self):
        if self.ffg_memory < 1:
            raise ValueError(f"ffg_memory must be at least 1, got {self.ffg_memory}")
        if self.ffg_max_step <= 0:
            raise ValueError(f"ffg_max_step must be positive, got {self.ffg_max_step}")


SECTIONS: dict[str, type] = {
    "sampler": SamplerConfig,
    "buffer": BufferConfig,
    "training": TrainingConfig,
    "model": ScoreModelConfig,
    "guidance": GuidanceConfig,
}


@dataclasses.dataclass(frozen=True)
class SearchConfig:
    """Hyperparameters of one GO-Diff run; its field defaults are the paper's heptamer
    settings (what the scripts run by default is `DEFAULT_SETTINGS[system]`).

    Read a field by its section (`config.training.train_steps`) or by its flat alias
    (`config.train_steps`); build one with `make_config(**names)`, change one with
    `config.replace(**names)`.
    """

    n_iterations: int = 20
    sampler: SamplerConfig = SamplerConfig()
    buffer: BufferConfig = BufferConfig()
    training: TrainingConfig = TrainingConfig()
    model: ScoreModelConfig = ScoreModelConfig()
    guidance: GuidanceConfig = GuidanceConfig()

    def __post_init__(self):
        if self.buffer.ess_buffer and self.training.holdout_fraction > 0:
            raise ValueError(
                "ess_buffer and holdout_fraction do not combine (the held-out share of a buffer whose size changes)"
            )
        self.kT_schedule()  # checks kT_anneal_iterations against n_iterations
        if self.buffer.kT_anneal_iterations and (self.buffer.adaptive_kT or self.ess_sampling):
            raise ValueError(
                "kT_anneal_iterations shapes the fixed schedule; adaptive_kT and ESS-driven "
                "sampling set kT otherwise (the default holds kT for the last half: add "
                "kT_anneal_iterations=0)"
            )
        if self.n_train < 1:
            raise ValueError(
                f"holdout_fraction {self.training.holdout_fraction} leaves no training "
                f"structures of a buffer of {self.buffer.buffer_size}"
            )

    def __getattr__(self, name: str) -> Any:  # flat aliases, read-only
        section = _FLAT.get(name)
        if section is None:
            raise AttributeError(f"SearchConfig has no field {name!r}")
        return getattr(object.__getattribute__(self, section), name)

    def replace(self, **names: Any) -> SearchConfig:
        """A copy with fields changed, by dotted name (`model__features` or a dict with
        "model.features") or flat alias (`features`). Where only n_iterations changes, a
        hold (kT_anneal_iterations) keeps its share of the iterations (at least 2; 0 for one)."""
        keys = {resolve(n.replace("__", "."))[1] for n in names}
        k = self.buffer.kT_anneal_iterations
        if "n_iterations" in keys and "kT_anneal_iterations" not in keys and k:
            n = names.get("n_iterations")
            if isinstance(n, (int, np.integer)) and not isinstance(n, bool) and n >= 1:
                share = 0 if n < 2 else min(n, max(2, round(k * n / self.n_iterations)))
                names = {**names, "kT_anneal_iterations": share}
        return _replace(self, names)

    @property
    def sde(self) -> VESDE:
        return VESDE(self.sampler.sigma_min, self.sampler.sigma_max)

    @property
    def stop_rule(self) -> StopRule | None:
        return self.training.stop_rule

    @property
    def ess_sampling(self) -> bool:
        return self.sampler.ess_target is not None

    @property
    def evaluation_budget(self) -> int:
        """Evaluations a seed may spend: max_evaluations with ESS sampling, else at most
        n_iterations x n_samples."""
        if self.ess_sampling:
            return self.sampler.max_evaluations
        return self.n_iterations * self.sampler.n_samples

    @property
    def buffer_capacity(self) -> int:
        """The training buffer's fixed shape (its largest size)."""
        return self.buffer.ess_buffer_max if self.buffer.ess_buffer else self.buffer.buffer_size

    @property
    def n_holdout(self) -> int:
        """Buffer structures held out of training (torch's random_split rounding)."""
        return int(np.floor(self.buffer.buffer_size * self.training.holdout_fraction))

    @property
    def n_train(self) -> int:
        return self.buffer.buffer_size - self.n_holdout

    @property
    def steps_per_epoch(self) -> int:
        """Minibatches per pass over the training structures (as `train.train_steps` walks them)."""
        return max(1, self.n_train // min(self.training.batch_size, self.n_train))

    def kT_schedule(self) -> np.ndarray:
        b = self.buffer
        return exponential_kT(b.kT_start, b.kT_end, self.n_iterations, b.kT_anneal_iterations)

    def to_dict(self) -> dict[str, Any]:
        """Nested plain dict (config.json, the TOML sections)."""
        return dataclasses.asdict(self)


# flat alias -> section
_FLAT: dict[str, str] = {
    f.name: section for section, cls in SECTIONS.items() for f in dataclasses.fields(cls)
}


def field_names() -> list[str]:
    """Every dotted field name, and `n_iterations`."""
    return ["n_iterations"] + [f"{s}.{n}" for n, s in _FLAT.items()]


def resolve(name: str) -> tuple[str | None, str]:
    """(section, field) of a dotted or flat name; raises KeyError naming the nearest."""
    if name == "n_iterations":
        return None, name
    section, dot, leaf = name.rpartition(".")
    if (
        dot
        and section in SECTIONS
        and leaf in {f.name for f in dataclasses.fields(SECTIONS[section])}
    ):
        return section, leaf
    if not dot and name in _FLAT:
        return _FLAT[name], name
    near = difflib.get_close_matches(name, field_names() + list(_FLAT), n=1)
    hint = f"; did you mean {near[0]!r}?" if near else ""
    raise KeyError(f"unknown setting {name!r}{hint}")


def field_type(name: str) -> Any:
    """The declared type of a setting (for parsing `--set` values)."""
    section, leaf = resolve(name)
    cls = SearchConfig if section is None else SECTIONS[section]
    return typing.get_type_hints(cls)[leaf]


def _replace(config: SearchConfig, names: dict[str, Any]) -> SearchConfig:
    top: dict[str, Any] = {}
    per_section: dict[str, dict[str, Any]] = {}
    for name, value in names.items():
        section, leaf = resolve(name.replace("__", "."))
        if section is None:
            top[leaf] = value
        else:
            per_section.setdefault(section, {})[leaf] = value
    for section, changes in per_section.items():
        top[section] = dataclasses.replace(getattr(config, section), **changes)
    return dataclasses.replace(config, **top)


def make_config(**names: Any) -> SearchConfig:
    """SearchConfig from dotted (`model__features=32`) or flat (`features=32`) names."""
    return _replace(SearchConfig(), names)


def from_dict(data: dict[str, Any]) -> SearchConfig:
    """SearchConfig from a nested dict (config.json now) or a flat one (older run dirs)."""
    names: dict[str, Any] = {}
    for key, value in data.items():
        if key in SECTIONS and isinstance(value, dict):
            names.update({f"{key}.{k}": v for k, v in value.items()})
        else:
            names[key] = value
    return _replace(SearchConfig(), names)


# The paper's settings for the built-in systems (the reference scripts'); a field not
# listed is SearchConfig's default. experiments/*.py and `godiff run` start from these.
PAPER_SETTINGS: dict[str, SearchConfig] = {
    "heptamer": make_config(
        n_iterations=20,  # kT annealed over 20 iterations
        n_samples=128,  # structures evaluated per iteration (2,560 in all)
        buffer_size=64,
        batch_size=16,
        train_steps=8000,  # 2000 epochs over the 64-structure buffer
        kT_start=5.0,  # eV
        kT_end=0.02,  # eV
        n_reverse_steps=500,
        t_end=0.005,
        min_distance=1.0,  # Å
        learning_rate=1e-4,
        weight_decay=0.01,
        clip_norm=10.0,
        plateau_factor=0.95,
        plateau_patience=100,
        features=64,  # PaiNN: 64 features, 4 blocks, 30 RBF, 6 Å cutoff
        n_blocks=4,
        n_rbf=30,
        cutoff=6.0,
    ),
}
PAPER_SETTINGS["adatom"] = PAPER_SETTINGS["heptamer"].replace(
    n_iterations=10,  # kT annealed over 10 iterations
    n_samples=32,  # structures evaluated per iteration (320 in all)
    buffer_size=16,
    batch_size=8,
    train_steps=2000,  # 1000 epochs over the 16-structure buffer
)


# The default: the paper's settings with the momentum-consensus training stop capped at 250
# steps at twice the learning rate, 100 reverse steps, kT cooled over the first half of the
# iterations, then held at kT_end, and half of each iteration's samples refined from the
# lowest structures found. Heptamer: the first three found 6/8 seeds against the paper
# settings' 4/8 (seeds 0-7), 20/40 over seeds 0-39; refinement 31/32 against their 15/32
# (seeds 0-7, 16-39); 250 steps at 2e-4 instead of 500 at 1e-4: 16/16 against 15/16 (seeds
# 0-15) in two thirds of the time; adatom: 8/8 against 3/8; 3-11x less time
# (benchmarks/RESULTS.md sections 27, 36, 58, 61, 72). The paper's settings are the preset
# "paper".
def fast_settings(paper: SearchConfig) -> SearchConfig:
    """The default made from a system's paper settings."""
    return paper.replace(
        train_stop=True,
        train_steps=250,
        learning_rate=2 * paper.learning_rate,
        n_reverse_steps=100,
        kT_anneal_iterations=paper.n_iterations // 2,
        refine_fraction=0.5,
    )


DEFAULT_SETTINGS: dict[str, SearchConfig] = {
    name: fast_settings(paper) for name, paper in PAPER_SETTINGS.items()
}
PAPER = "paper"  # the preset that starts from the paper's settings instead of the default

# Named overlays on a system's settings. "reference": every choice of the authors' code that
# differs from ours (issue 8): truncated training noise, the loss averaged over all atoms,
# a fresh optimizer per iteration, a 90/10 buffer split driving the plateau scheduler,
# truncated reverse-step noise, and their score convention.
PRESETS: dict[str, dict[str, object]] = {
    "reference": {
        "training.score_convention": "reference",
        "training.truncated_noise": True,
        "training.loss_normalisation": "all_atoms",
        "training.fresh_optimizer": True,
        "training.holdout_fraction": 0.1,
        "sampler.reverse_truncated_z": True,
    },
}


PRESET_NAMES = (PAPER, *sorted(PRESETS))


def apply_preset(config: SearchConfig, name: str | None) -> SearchConfig:
    """`config` with the named overlay's fields set (None: unchanged)."""
    if name is None:
        return config
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; known: {sorted(PRESETS)}")
    return _replace(config, PRESETS[name])


def with_presets(default: SearchConfig, paper: SearchConfig, names) -> SearchConfig:
    """`default`, or `paper` where "paper" is among `names`, with the other named overlays
    applied in their order (`--preset paper --preset reference`: the authors' code at the
    paper's settings)."""
    names = [] if names is None else [names] if isinstance(names, str) else list(names)
    unknown = [n for n in names if n not in PRESET_NAMES]
    if unknown:
        raise ValueError(f"unknown preset {unknown[0]!r}; known: {', '.join(PRESET_NAMES)}")
    config = paper if PAPER in names else default
    for name in names:
        if name != PAPER:
            config = apply_preset(config, name)
    return config
