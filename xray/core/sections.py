"""The models of params.yaml's sections, one pydantic model per section (parsed by params.py)."""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

from xray.perturbations.names import FAMILY_NAMES, HELD_OUT

PosInt = Annotated[int, Field(gt=0, le=2**31 - 1)]  # a count TensorFlow and numpy can hold
Epochs = Annotated[int, Field(gt=0, le=10_000)]  # epochs, patience: a run that ends
Seed = Annotated[int, Field(ge=0, le=2**32 - 1)]  # what numpy's and TensorFlow's seeds accept
Bytes = Annotated[int, Field(gt=0, le=2**50)]  # a size in bytes (1 PiB at most)
Fraction = Annotated[float, Field(gt=0.0, lt=1.0)]
CLASS_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
"""A class name is also a folder name: letters, digits, '_', '.', '-'."""
URL_SCHEME_RE = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]+):")
"""A leading URL scheme (two letters or more, so Windows drive letters are paths)."""
HTTP_SCHEMES = ("http", "https")
DASK_ADDRESS_RE = re.compile(r"^([a-z][a-z0-9+]*://)?(\[[0-9A-Fa-f:.]+\]|[^\s/:\[\]]+)(:\d+)?$")
"""A Dask scheduler address: [protocol://]host[:port], an IPv6 host in brackets."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SyntheticParams(_Section):
    seed: Seed = 7
    patients_per_class: PosInt = 70
    images_per_patient: tuple[PosInt, PosInt] = (1, 4)
    image_size: Annotated[int, Field(ge=64, le=1024)] = 224

    @field_validator("images_per_patient")
    @classmethod
    def _ordered(cls, v: tuple[int, int]) -> tuple[int, int]:
        if v[0] > v[1]:
            raise ValueError(f"min {v[0]} is above max {v[1]}")
        return v


class DataParams(_Section):
    source: str = "synthetic"
    sha256: str | None = Field(default=None, pattern=r"^[0-9a-fA-F]{64}$")
    classes: tuple[str, ...] = ("NORMAL", "PNEUMONIA")
    class_map: dict[str, str] = {}
    ignore: tuple[str, ...] = ()
    patient_pattern: str | None = None
    max_side: Annotated[int, Field(ge=32)] | None = 256
    max_pixels: PosInt = 50_000_000  # read from the header, before any pixel is decoded
    max_file_bytes: Bytes = 100_000_000  # per file, checked before it is read
    min_images_per_class: PosInt = 1  # after quarantine; in data/raw, and in train and test
    max_bad_fraction: Annotated[float, Field(ge=0.0, le=1.0)] = 0.05
    max_archive_bytes: Bytes = 20_000_000_000
    max_archive_members: PosInt = 200_000
    max_download_bytes: Bytes | None = None  # a URL's body; None: max_archive_bytes
    min_download_rate: Annotated[float, Field(ge=0.0)] = 10_000.0  # bytes/s; 0: no floor
    download_rate_window_s: Annotated[float, Field(gt=0.0, le=86_400.0)] = 120.0
    synthetic: SyntheticParams = SyntheticParams()

    @property
    def download_cap(self) -> int:
        """The most bytes a URL source may send (max_download_bytes, else max_archive_bytes)."""
        return self.max_download_bytes or self.max_archive_bytes

    @field_validator("source")
    @classmethod
    def _source(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("must not be empty")
        m = URL_SCHEME_RE.match(v)
        if m and m.group(1).lower() not in HTTP_SCHEMES:
            raise ValueError(f"URL scheme {m.group(1)!r} is not http or https")
        if m and not re.match(r"^https?://[^/?#\s]+", v, re.IGNORECASE):
            raise ValueError("URL has no host")
        return v

    @field_validator("classes")
    @classmethod
    def _classes(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        if len(v) != 2:
            raise ValueError(f"need exactly two classes (negative, positive), got {list(v)}")
        for name in v:
            if not CLASS_NAME_RE.match(name):
                raise ValueError(f"{name!r} is not a valid class (folder) name")
        if len({c.upper() for c in v}) != len(v):
            raise ValueError(f"duplicate class names in {list(v)}")
        return v

    @field_validator("class_map")
    @classmethod
    def _class_map(cls, v: dict[str, str], info: ValidationInfo) -> dict[str, str]:
        classes = info.data.get("classes")
        if classes is None:  # classes itself failed; that error is reported
            return v
        canonical = {c.upper(): c for c in classes}
        out = {}
        for folder, name in v.items():
            target = canonical.get(name.upper())
            if target is None:
                raise ValueError(f"{folder!r} -> {name!r}: {name!r} is not one of {list(classes)}")
            mapped = canonical.get(folder.upper())
            if mapped is not None and mapped != target:
                raise ValueError(
                    f"{folder!r} is itself the class {mapped!r}; it cannot map to {target!r}"
                )
            out[folder] = target
        return out

    @field_validator("ignore")
    @classmethod
    def _ignore(cls, v: tuple[str, ...], info: ValidationInfo) -> tuple[str, ...]:
        used = {c.upper(): "a configured class" for c in info.data.get("classes") or ()}
        used |= {f.upper(): "mapped in class_map" for f in info.data.get("class_map") or {}}
        for name in v:
            if name.upper() in used:
                raise ValueError(f"{name!r} is {used[name.upper()]}; it cannot be ignored")
        return v

    @field_validator("patient_pattern")
    @classmethod
    def _pattern(cls, v: str | None) -> str | None:
        if v is not None:
            try:
                rx = re.compile(v)
            except re.error as e:
                raise ValueError(f"not a valid regex: {e}") from None
            if "patient" not in rx.groupindex and rx.groups < 1:
                raise ValueError("the regex needs a group, e.g. (?P<patient>...)")
        return v

    @property
    def positive_class(self) -> str:
        return self.classes[1]


class SplitParams(_Section):
    seed: Seed = 42
    val_fraction: Fraction = 0.15
    test_fraction: Fraction = 0.15
    merge_official_val: bool = True

    @field_validator("test_fraction")
    @classmethod
    def _sum(cls, v: float, info: ValidationInfo) -> float:
        val = info.data.get("val_fraction")
        if val is not None and val + v >= 1.0:
            raise ValueError(f"val_fraction ({val}) + test_fraction must be below 1")
        return v


def _known_families(v: tuple[str, ...]) -> tuple[str, ...]:
    """Raise ValueError naming the first family that is not in the corruption suite."""
    unknown = [f for f in v if f not in FAMILY_NAMES]
    if unknown:
        known = ", ".join(FAMILY_NAMES)
        raise ValueError(f"unknown corruption family {unknown[0]!r} (known: {known})")
    if len(set(v)) != len(v):
        dup = next(f for f in v if v.count(f) > 1)
        raise ValueError(f"family {dup!r} is listed twice")
    return v


def _all_families() -> tuple[str, ...]:
    """Every family of the corruption suite, in its order."""
    return FAMILY_NAMES


def _held_out_families() -> tuple[str, ...]:
    """The suite's default held-out families (evaluation only, never fine-tuned on)."""
    return HELD_OUT


class CorruptParams(_Section):
    seed: Seed = 2024
    families: tuple[str, ...] = Field(default_factory=_all_families)
    severities: tuple[Annotated[int, Field(ge=1, le=5)], ...] = (1, 2, 3, 4, 5)
    held_out: tuple[str, ...] = Field(default_factory=_held_out_families)

    @field_validator("families")
    @classmethod
    def _families(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        if not v:
            raise ValueError("list at least one family")
        return _known_families(v)

    @field_validator("held_out")
    @classmethod
    def _held_out(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        return _known_families(v)

    @model_validator(mode="after")
    def _trainable(self) -> CorruptParams:
        if all(f in self.held_out for f in self.families):
            raise ValueError(
                "held_out: every family in corrupt.families is held out; "
                "fine-tuning needs at least one"
            )
        return self

    @property
    def finetune_families(self) -> tuple[str, ...]:
        """The listed families fine-tuning trains on (all but the held-out ones)."""
        return tuple(f for f in self.families if f not in self.held_out)

    @field_validator("severities")
    @classmethod
    def _severities(cls, v: tuple[int, ...]) -> tuple[int, ...]:
        if not v:
            raise ValueError("list at least one severity")
        return tuple(sorted(set(v)))


class ComputeParams(_Section):
    """Where the data stages' heavy work runs; never a stage dependency (output is identical)."""

    executor: Literal["local", "dask"] = "local"
    dask_address: str = ""  # empty: a LocalCluster on 127.0.0.1 for the stage's duration
    # local processes / LocalCluster workers; 0 = cores
    workers: Annotated[int, Field(ge=0, le=4096)] = 0
    # Decoded training images: in memory, or in .npy files read batch by batch (np.memmap).
    # auto: files when the decoded images would pass cache_memory_mb (0 = a quarter of RAM).
    cache: Literal["auto", "memory", "file"] = "auto"
    cache_memory_mb: Annotated[int, Field(ge=0, le=2**30)] = 0

    @field_validator("dask_address")
    @classmethod
    def _address(cls, v: str) -> str:
        v = v.strip()
        if v and not DASK_ADDRESS_RE.match(v):
            raise ValueError("expected a scheduler address like tcp://host:8786")
        return v

    @model_validator(mode="after")
    def _address_needs_dask(self) -> ComputeParams:
        if self.dask_address and self.executor != "dask":
            raise ValueError(
                "dask_address is set but executor is local (set compute.executor: dask)"
            )
        return self


class TrainParams(_Section):
    arch: Literal["xray_net", "seed_cnn", "efficientnet_b0", "resnet50", "mobilenet_v3_small"] = (
        "xray_net"
    )
    weights: Literal["imagenet"] | None = None  # Keras Applications backbones only
    image_size: Annotated[int, Field(ge=32, le=1024)] = 160
    # none (pixels / 255) | standardize (each image to zero mean, unit variance, in the model)
    # | equalize (each image's histogram equalized, in the model)
    normalize: Literal["none", "standardize", "equalize"] = "none"
    # share of the input cut from each side inside the model (built-in CenterCrop): borders,
    # text and markers unseen; 0 = the whole image
    crop: Annotated[float, Field(ge=0.0, le=0.3)] = 0.0
    # mixup (Zhang et al. 2018): each draw blended with another of its batch, weight ~ Beta(a, a)
    # kept >= 0.5 for its own image; this is a (0 = off)
    mixup: Annotated[float, Field(ge=0.0, le=4.0)] = 0.0
    batch_size: PosInt = 32
    epochs: Epochs = 15
    learning_rate: Annotated[float, Field(gt=0.0, le=1.0)] = 2e-3
    lr_schedule: Literal["cosine", "plateau", "constant"] = "cosine"
    warmup_epochs: Annotated[int, Field(ge=0, le=10_000)] = 1
    weight_decay: Annotated[float, Field(ge=0.0)] = 1e-4
    patience: Epochs = 5
    augment: bool = True
    augment_strength: Annotated[float, Field(ge=0.0, le=3.0)] = 1.0
    seed: Seed = 42
    deterministic: bool = True
    threads: Annotated[int, Field(ge=0, le=4096)] = 0
    mixed_precision: bool = False  # bfloat16 compute, float32 weights
    jit_compile: bool = False  # XLA
    # tf.distribute (xray/models/distribute.py, docs/scale-out.md); batch_size is the global batch
    strategy: Literal["default", "mirrored", "multi_worker"] = "default"
    cpu_replicas: Annotated[int, Field(ge=0, le=64)] = 0  # mirrored, no GPU: N logical CPUs

    @model_validator(mode="after")
    def _weights(self) -> TrainParams:
        if self.normalize != "none" and self.arch not in ("xray_net", "seed_cnn"):
            raise ValueError(f"normalize: {self.arch} has its own input preprocessing (use none)")
        if self.crop and self.arch not in ("xray_net", "seed_cnn"):
            raise ValueError(f"crop: {self.arch} takes the whole image (use 0)")
        if self.weights is not None and self.arch in ("xray_net", "seed_cnn"):
            raise ValueError(f"weights: {self.arch} has no pretrained weights (use null)")
        if self.warmup_epochs >= self.epochs:
            raise ValueError(
                f"warmup_epochs ({self.warmup_epochs}) must be below epochs ({self.epochs})"
            )
        return self


class FinetuneParams(_Section):
    trainable_layers: PosInt = 10
    unfreeze_from: str | None = None
    epochs: Epochs = 8
    batch_size: PosInt = 32
    learning_rate: Annotated[float, Field(gt=0.0, le=1.0)] = 3e-4
    patience: Epochs = 3
    seed: Seed = 43
    clean_fraction: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.5
    # train_base's acquisition augmentation on every fine-tuning draw, at this strength
    # (0 = none): the tail keeps the pose, exposure and blur invariances the base learned.
    augment_strength: Annotated[float, Field(ge=0.0, le=3.0)] = 0.0
    # AugMix (xray/perturbations/augmix.py): each draw trained beside this many mixed copies
    # of itself (0 = off), with a Jensen-Shannon consistency term of this weight
    augmix_views: Annotated[int, Field(ge=0, le=4)] = 2
    consistency: Annotated[float, Field(ge=0.0, le=100.0)] = 12.0
    # one machine only: its Python-generator input cannot be sharded across workers
    strategy: Literal["default", "mirrored"] = "default"


class EvaluateParams(_Section):
    batch_size: PosInt = 64
    grid_images: Annotated[int, Field(ge=1, le=64)] = 8
    # The acquisition-shift proxy (xray/reports/proxy.py): val images under these names of
    # xray.perturbations.shift (checked by evaluate before reading) ...
    proxy_shifts: tuple[str, ...] = (
        "equalize",
        "window_level",
        "unsharp",
        "low_res",
        "heel",
        "collimation",
        "markers",
        "grid_lines",
    )
    # ... each shifted set drawn again at these PNEUMONIA shares (shift + class balance) ...
    proxy_priors: tuple[Fraction, ...] = (0.5, 0.6, 0.85)
    # ... and damaged by the `seed` family at this severity (shift + damage; null = none)
    proxy_damage_severity: Annotated[int, Field(ge=1, le=5)] | None = 3
    proxy_seed: Seed = 11

    @model_validator(mode="before")
    @classmethod
    def _renamed(cls, data: Any) -> Any:
        if isinstance(data, dict) and "proxy_prior" in data:
            raise ValueError(
                "proxy_prior is now proxy_priors, a list of PNEUMONIA shares "
                "(e.g. [0.5, 0.6, 0.85])"
            )
        return data

    @field_validator("proxy_priors")
    @classmethod
    def _distinct_priors(cls, v: tuple[float, ...]) -> tuple[float, ...]:
        if len({f"{p:g}" for p in v}) != len(v):
            raise ValueError(f"a share is listed twice in {list(v)}")
        return v


class AdaptParams(_Section):
    """What to adapt: evaluate, `xray adapt`, `xray predict --adapt` and the model file."""

    models: tuple[Literal["base", "finetuned"], ...] = ("base", "finetuned")
    bn: bool = True  # AdaBN
    tent_steps: Annotated[int, Field(ge=0, le=1000)] = 0
    tent_lr: Annotated[float, Field(gt=0.0, le=0.1)] = 1e-4
    tent_max_shift: Annotated[float, Field(gt=0.0, le=1.0)] = 0.15
    prior: bool = True  # label-shift threshold correction (EM), after AdaBN
    # a known PNEUMONIA share of the target (null: unknown): the threshold moves to it, no estimate
    prevalence: Fraction | None = None
    # the EM estimate moves the threshold only where BBSE agrees within prior_tolerance and
    # the own-bias check is silent
    prior_check: bool = True
    prior_tolerance: Annotated[float, Field(gt=0.0, lt=1.0)] = 0.05
    # fall back to the unadapted model when the adapted calls move too far from its calls
    guard: bool = True
    guard_min_agreement: Annotated[float, Field(ge=0.0, le=1.0)] = 0.4
    guard_max_call_shift: Annotated[float, Field(gt=0.0, le=1.0)] = 0.6
    min_images: PosInt = 32
    batch_size: PosInt = 64
    seed: Seed = 0

    @property
    def method(self) -> str:
        """A short name of the adaptation, e.g. `adabn+tent+prior`, `adabn+prevalence`, `none`."""
        known = self.prevalence is not None
        on = (
            ("adabn", self.bn),
            ("tent", self.tent_steps > 0),
            ("prevalence", known),
            ("prior", self.prior and not known),
        )
        return "+".join(name for name, used in on if used) or "none"

    def settings(self) -> dict[str, Any]:
        """The settings without `models` (as reports/adaptation.json records them)."""
        return self.model_dump(exclude={"models"})
