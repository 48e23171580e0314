"""Frozen configuration objects stored with every model.

Everything here is plain data: it round-trips through JSON (``to_dict`` / ``from_dict``) so that a
checkpoint bundle carries its own constructor arguments and serving metadata.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

Scenario = Literal["class-incremental", "task-incremental"]
SCENARIOS: tuple[Scenario, ...] = ("class-incremental", "task-incremental")
BackboneName = Literal["mlp", "cnn", "resnet18", "identity"]
# Built in: random init, trained by the job ("mlp", "cnn", "resnet18"), or nothing to train: "identity" declares
# that the inputs already are features (sentence embeddings, a pretrained model's outputs), flattened as given.
BUILTIN_BACKBONES: tuple[BackboneName, ...] = ("mlp", "cnn", "resnet18", "identity")
FEATURE_BACKBONES: tuple[BackboneName, ...] = ("identity",)  # frozen by construction: features are the input
# Where a backbone's weights come from: "none" (random init), "package" (an installed registry package,
# offline), "file" (a safetensors or torch state-dict file on the server), "download" (the framework's own
# download into a cache dir, only when the host allows downloads; otherwise the cache must already hold it).
WeightsSource = Literal["none", "package", "file", "download"]
WEIGHTS_SOURCES: tuple[WeightsSource, ...] = ("none", "package", "file", "download")
# What a job trains of the backbone: nothing ("frozen", features can be cached), its last stage and what
# follows it ("last"), or everything ("all"). The head always trains.
TrainablePart = Literal["frozen", "last", "all"]
TRAINABLE_PARTS: tuple[TrainablePart, ...] = ("frozen", "last", "all")
# Registry prefixes of pretrained backbones: "timm/<timm model name>", "torchvision/<model name>" and the
# sentence encoders of TEXT_ENCODERS ("sentence-transformers/<model>").
REGISTRIES = ("timm", "torchvision", "sentence-transformers")
# Sentence encoders a text classifier can use (model_core.text describes each: its package, files, sizes).
TEXT_ENCODERS = ("sentence-transformers/all-MiniLM-L6-v2",)
# Backbones whose weights ship in an installed package (the offline default source).
PACKAGE_WEIGHTS = ("timm/efficientnet_lite0", *TEXT_ENCODERS)
# Tokens a text input is cut at when none is declared: the length all-MiniLM-L6-v2 was trained at (its
# sentence-transformers config allows 256, and its position table 512: declare up to MAX_TOKENS).
DEFAULT_MAX_TOKENS = 128
MAX_TOKENS = 512
# Side, in pixels, that a registry backbone resizes its input to (inside the graph) when none is given.
DEFAULT_RESOLUTION = 224


@dataclass(frozen=True)
class InputSpec:
    """What one model input looks like, before the batch axis.

    Images are float32 in [0, 1], laid out (C, H, W); vectors are float32 (D,); text is its token ids
    (max_tokens,) as float32 (exact: vocabularies are far below 2**24), [CLS] first, [SEP] last, padded with
    0 ([PAD]) to max_tokens. The tokenizer (model_core.text) makes them from the message in the API process,
    the same code at learn and predict time; the encoder graph casts them back to integers.
    """

    kind: Literal["image", "vector", "text"]
    channels: int = 1  # images only
    height: int = 0  # images only, pixels
    width: int = 0  # images only, pixels
    dim: int = 0  # vectors only
    max_tokens: int = 0  # text only: tokens a message may have, [CLS] and [SEP] included (0: DEFAULT_MAX_TOKENS)

    def __post_init__(self) -> None:
        if self.kind == "image":
            if min(self.channels, self.height, self.width) < 1:
                raise ValueError("an image input needs channels, height and width >= 1")
            if self.channels not in (1, 3):
                raise ValueError("an image input has 1 (grey) or 3 (RGB) channels")
        elif self.kind == "vector":
            if self.dim < 1:
                raise ValueError("a vector input needs dim >= 1")
        elif self.kind == "text":
            if self.max_tokens == 0:
                object.__setattr__(self, "max_tokens", DEFAULT_MAX_TOKENS)
            if not 8 <= self.max_tokens <= MAX_TOKENS:
                raise ValueError(f"a text input needs max_tokens between 8 and {MAX_TOKENS}")
        else:
            raise ValueError(f"unknown input kind {self.kind!r}; expected 'image', 'vector' or 'text'")

    @property
    def shape(self) -> tuple[int, ...]:
        """Shape of one sample, without the batch axis."""
        if self.kind == "image":
            return (self.channels, self.height, self.width)
        if self.kind == "text":
            return (self.max_tokens,)
        return (self.dim,)

    @property
    def numel(self) -> int:
        n = 1
        for s in self.shape:
            n *= s
        return n


@dataclass(frozen=True)
class Preprocessing:
    """How raw inputs become the network's input; identical at learn and predict time.

    The network normalises internally with ``mean``/``std`` (one value per channel for images, one per
    feature or a single value for vectors), so the exported ONNX graph takes [0, 1] pixels directly.
    """

    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)
    resize: Literal["bilinear", "nearest"] = "bilinear"  # how images of another size are resampled
    # How uploaded pixel values map to [0, 1]; 255 for 8-bit images. Vectors are used as given.
    pixel_scale: float = 255.0


@dataclass(frozen=True)
class BackboneSpec:
    """Which feature extractor a classifier uses, where its weights come from, and what of it trains.

    ``name`` is a built-in (``mlp``, ``cnn``, ``resnet18``: random init) or a registry name:
    ``timm/<model>`` (any ``timm.list_models()`` name, e.g. ``timm/efficientnet_lite0``) or
    ``torchvision/<model>`` (any ``torchvision.models.list_models()`` name, e.g. ``torchvision/resnet18``).
    Unset fields get their defaults in ``__post_init__``, so a stored spec always says what it means.
    The fields after ``cache_dir`` are recorded when the weights are checked (``resolve_backbone``); a
    backbone built from a spec that lacks them reads them from the model's own pretrained config.
    """

    name: str = "mlp"
    # default: "package" where a package ships the weights, "download" for other registry names, "none"
    # for the built-ins
    weights: WeightsSource | None = None
    file: str | None = None  # weights == "file": path of the file on the server
    train: TrainablePart | None = None  # default: "frozen" with pretrained weights, else "all"
    # Registry backbones: side in pixels the input is resized to inside the graph (the shorter side when
    # the declared image is not square). Built-ins use the declared size and leave this unset.
    resolution: int | None = None
    cache_dir: str | None = None  # weights == "download": where the framework caches downloaded files
    sha256: str | None = None  # of the weights file; a build refuses a file that changed since
    mean: tuple[float, ...] | None = None  # per RGB channel, of the pretrained weights' training data
    std: tuple[float, ...] | None = None
    input_size: tuple[int, ...] | None = None  # (C, H, W) the weights were trained at
    tokenizer: str | None = None  # sentence encoders: sha256 of the tokenizer file (model_core.text)

    def __post_init__(self) -> None:
        registry, _, model = self.name.partition("/")
        if self.name not in BUILTIN_BACKBONES and (registry not in REGISTRIES or not model):
            raise ValueError(
                f"unknown backbone {self.name!r}; expected mlp, cnn, resnet18, 'timm/<model>' or 'torchvision/<model>'"
            )
        builtin = self.name in BUILTIN_BACKBONES
        weights = self.weights or ("none" if builtin else "package" if self.name in PACKAGE_WEIGHTS else "download")
        if weights not in WEIGHTS_SOURCES:
            raise ValueError(f"unknown weights source {weights!r}; expected one of {', '.join(WEIGHTS_SOURCES)}")
        if builtin and weights != "none":
            raise ValueError(f"backbone {self.name!r} has no pretrained weights; use a 'timm/...' or 'torchvision/...' name")
        if weights == "package" and self.name not in PACKAGE_WEIGHTS:
            raise ValueError(f"no installed package ships weights for {self.name!r}; packaged: {', '.join(PACKAGE_WEIGHTS)}")
        if (weights == "file") != bool(self.file):
            raise ValueError("weights 'file' needs 'file', the path of the weights file, and only it takes one")
        train = self.train or ("all" if weights == "none" and self.name not in FEATURE_BACKBONES else "frozen")
        if train not in TRAINABLE_PARTS:
            raise ValueError(f"unknown train {train!r}; expected one of {', '.join(TRAINABLE_PARTS)}")
        if self.name in FEATURE_BACKBONES:
            if train != "frozen":
                raise ValueError(f"backbone {self.name!r} has nothing to train: its features are the input (train 'frozen')")
        elif builtin and train != "all":
            raise ValueError(f"backbone {self.name!r} starts from random weights, so all of it trains (train 'all')")
        resolution = self.resolution
        if builtin and resolution is not None:
            raise ValueError(f"backbone {self.name!r} works at the declared image size; 'resolution' is for registry backbones")
        if self.name in TEXT_ENCODERS:
            if resolution is not None:
                raise ValueError(f"backbone {self.name!r} reads text; 'resolution' is for image backbones")
            if weights != "package" or train != "frozen":
                raise ValueError(f"backbone {self.name!r} runs frozen with its packaged weights (weights 'package', train 'frozen')")
        elif registry == "sentence-transformers":
            raise ValueError(f"unknown sentence encoder {self.name!r}; available: {', '.join(TEXT_ENCODERS)}")
        elif not builtin:
            resolution = resolution or DEFAULT_RESOLUTION
            if not 16 <= resolution <= 1024:
                raise ValueError(f"resolution must be between 16 and 1024 pixels, got {resolution}")
        for key, value in (("weights", weights), ("train", train), ("resolution", resolution)):
            object.__setattr__(self, key, value)

    @property
    def builtin(self) -> bool:
        return self.name in BUILTIN_BACKBONES

    @property
    def text(self) -> bool:
        """A sentence encoder: token ids in, one embedding a message out."""
        return self.name in TEXT_ENCODERS

    @property
    def pretrained(self) -> bool:
        return self.weights != "none"

    @classmethod
    def parse(cls, value: BackboneSpec | str | dict[str, Any]) -> BackboneSpec:
        """A spec from a name (``"cnn"``, how older specs stored it), a dict (``to_dict``) or a spec."""
        if isinstance(value, BackboneSpec):
            return value
        if isinstance(value, str):
            return cls(name=value)
        data = dict(value)
        for key in ("mean", "std", "input_size"):
            if data.get(key) is not None:
                data[key] = tuple(data[key])
        return cls(**data)


@dataclass(frozen=True)
class WeightsAccess:
    """How this host may obtain pretrained weights; the service builds it from its settings."""

    cache_dir: str | None = None  # where framework downloads are cached (and baked images keep them)
    allow_download: bool = False  # off: a "download" source must already be in cache_dir
    # Where a "file" source must be (its path taken relative to it, resolved, and refused outside it). None: any
    # path, as a library caller names it; the service always sets it, so a client cannot name other files.
    files_dir: str | None = None


@dataclass(frozen=True)
class NetworkSpec:
    """Everything needed to rebuild the network before loading its weights."""

    input: InputSpec
    # A name (``"cnn"``) is accepted too and becomes BackboneSpec(name) in __post_init__.
    backbone: BackboneSpec = field(default_factory=BackboneSpec)
    scenario: Scenario = "class-incremental"
    # MLP hidden widths; the last is the feature size. 2x256 matches the Avalanche peer setup.
    hidden: tuple[int, ...] = (256, 256)
    # CNN channel widths of its three conv stages; a 256-wide linear layer follows them.
    cnn_channels: tuple[int, ...] = (32, 64, 128)
    preprocessing: Preprocessing = field(default_factory=Preprocessing)

    def __post_init__(self) -> None:
        if self.scenario not in SCENARIOS:
            raise ValueError(f"unknown scenario {self.scenario!r}; expected one of {SCENARIOS}")
        backbone = BackboneSpec.parse(self.backbone)
        object.__setattr__(self, "backbone", backbone)
        if (self.input.kind == "text") != backbone.text:
            raise ValueError(f"text input needs a sentence encoder backbone ({', '.join(TEXT_ENCODERS)})"
                             if self.input.kind == "text" else f"backbone {backbone.name!r} reads text; declare input kind 'text'")
        if not backbone.text and backbone.name not in ("mlp", *FEATURE_BACKBONES) and self.input.kind != "image":
            raise ValueError(f"backbone {backbone.name!r} needs image input; use 'mlp' or 'identity' for vectors")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> NetworkSpec:
        data = dict(data)
        data["input"] = InputSpec(**data["input"])
        pre = dict(data.get("preprocessing") or {})
        for key in ("mean", "std"):
            if key in pre:
                pre[key] = tuple(pre[key])
        data["preprocessing"] = Preprocessing(**pre)
        if "backbone" in data:  # a name in specs stored before backbones had weights, else a dict
            data["backbone"] = BackboneSpec.parse(data["backbone"])
        for key in ("hidden", "cnn_channels"):
            if key in data:
                data[key] = tuple(data[key])
        return cls(**data)


def default_backbone(spec: InputSpec) -> str:
    """The backbone a new classifier gets when none is asked for, chosen by measurement
    (python -m benchmarks.continual with --dataset digits-long, --size 8 and 28, and cifar10-mini):

    - vectors: the MLP (its input has no spatial structure to exploit);
    - grey images up to 32 px (digits, glyphs, small scans): the MLP, trained from scratch. With generative
      replay's per-class generators it keeps every task at 8x8 and 28x28 (0.973 and 0.970 over 3 seeds,
      joint training 0.970 and 0.965); the small CNN keeps them too, but at 28x28 it needs about 110 times
      the MLP's multiply-adds per image, paid on every step of a CPU worker;
    - RGB images of any size, and grey images above 32 px: ImageNet-pretrained EfficientNet-Lite0, frozen,
      with weights from an installed package (nothing downloaded). A few hundred photos cannot train a
      network from scratch, and frozen pretrained features are what replay and the analytic head build on.
    """
    if spec.kind == "text":  # the one sentence encoder packaged (model_core.text)
        return TEXT_ENCODERS[0]
    if spec.kind == "vector":
        return "mlp"
    if spec.channels == 1 and max(spec.height, spec.width) <= 32:
        return "mlp"
    return "timm/efficientnet_lite0"


@dataclass(frozen=True)
class TrainConfig:
    """How one experience is trained. Defaults follow the Avalanche peer setup on Split-Digits."""

    # Fixed optimiser steps per experience (van de Ven protocol: 2000). None: a budget from the data, stopped
    # on a validation plateau (model_core.trainer.step_budget).
    iterations: int | None = None
    max_iterations: int = 5000  # the most steps a budget from the data may reach (a deployment's bound)
    batch_size: int = 64  # new-data samples per step; replay adds its own samples on top
    lr: float = 1e-3  # Adam learning rate
    weight_decay: float = 0.0
    seed: int = 0  # seeds weights of new units, shuffling, replay sampling and generators
    device: str = "auto"  # "auto" picks cuda when available, else cpu
    amp: bool = True  # bf16 autocast on cuda; ignored on cpu
    eval_batch_size: int = 512

    def __post_init__(self) -> None:
        if self.iterations is not None and self.iterations < 1:
            raise ValueError("iterations must be >= 1")
        if self.max_iterations < 1:
            raise ValueError("max_iterations must be >= 1")
        if self.batch_size < 1 or self.lr <= 0:
            raise ValueError("batch_size must be >= 1 and lr > 0")
