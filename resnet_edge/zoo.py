"""ResNet variants by name, their weights, checkpoints, and the ModelCard that travels with a model.

Two families share torchvision's BasicBlock and Bottleneck:
- ImageNet: torchvision's resnet18 ... resnext101_64x4d (7x7 stem, four stages, 224x224 inputs);
- CIFAR: the ResNet paper's CIFAR networks resnet20/32/44/56/110 (3x3 stem, three stages of
  16/32/64 channels, 32x32 inputs), depth = 6n + 2.

Over 400 lines because a model, its card and its checkpoint are one idea: a checkpoint is the
model's weights with its card, and each loader refuses what the card contradicts.
"""

from __future__ import annotations

import difflib
import os
import re
import pickle
import urllib.error
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
import torchvision
from torch import nn
from torchvision.models.resnet import BasicBlock, conv1x1

from .artifacts import atomic_path, sha256_file
from .data import CIFAR_MEAN, CIFAR_STD, Preprocess
from .errors import BadInput, DataWarning, first_line

CHECKPOINT_FORMAT = "resnet-edge.checkpoint/1"
CARD_OPTIONAL = ("class_names", "weights", "weights_sha256", "metrics", "folded_normalization",
                 "output")
OUTPUTS = ("logits", "probabilities")
MAX_CLASSES = 100_000
RANDOM_INIT_SEED = 0


class CifarResNet(nn.Module):
    """The CIFAR ResNet of He et al. 2015, section 4.2, with projection shortcuts (option B)."""

    def __init__(self, blocks_per_stage: int, num_classes: int = 10):
        super().__init__()
        self.inplanes = 16
        self.conv1 = nn.Conv2d(3, 16, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.relu = nn.ReLU(inplace=True)
        self.layer1 = self._make_layer(16, blocks_per_stage, stride=1)
        self.layer2 = self._make_layer(32, blocks_per_stage, stride=2)
        self.layer3 = self._make_layer(64, blocks_per_stage, stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(64 * BasicBlock.expansion, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)

    def _make_layer(self, planes: int, blocks: int, stride: int) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes * BasicBlock.expansion:
            downsample = nn.Sequential(conv1x1(self.inplanes, planes * BasicBlock.expansion, stride),
                                       nn.BatchNorm2d(planes * BasicBlock.expansion))
        layers = [BasicBlock(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes * BasicBlock.expansion
        layers += [BasicBlock(self.inplanes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(torch.flatten(self.avgpool(x), 1))


@dataclass(frozen=True)
class Variant:
    name: str
    family: str  # "imagenet" or "cifar"
    build: Callable[[int], nn.Module]
    default_classes: int
    default_preprocess: Preprocess

    @property
    def weight_names(self) -> list[str]:
        if self.family != "imagenet":
            return []
        enum = torchvision.models.get_model_weights(self.name)
        return ["DEFAULT", *(m.name for m in enum)]  # iteration skips the DEFAULT alias

    def resolve_weights(self, name: str):
        """The torchvision weights enum member for `name`, or a clear error."""
        if not self.weight_names:
            raise BadInput(f"{self.name} has no published weights; use --weights none or a "
                           "checkpoint path")
        enum = torchvision.models.get_model_weights(self.name)
        try:
            return enum[name.upper()]
        except KeyError:
            raise BadInput(f"{self.name} has no weights named {name!r}; choose one of "
                           f"{', '.join(self.weight_names)}, none, or a checkpoint path") from None


def _imagenet(name: str) -> Variant:
    def build(num_classes: int) -> nn.Module:
        return torchvision.models.get_model(name, weights=None, num_classes=num_classes)
    return Variant(name, "imagenet", build, 1000, Preprocess(input_size=224, resize=256))


def _cifar(name: str, blocks: int) -> Variant:
    return Variant(name, "cifar", lambda num_classes: CifarResNet(blocks, num_classes), 10,
                   Preprocess(input_size=32, resize=32, mean=CIFAR_MEAN, std=CIFAR_STD))


VARIANTS: dict[str, Variant] = {v.name: v for v in [
    *(_imagenet(n) for n in ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152",
                             "wide_resnet50_2", "wide_resnet101_2", "resnext50_32x4d",
                             "resnext101_32x8d", "resnext101_64x4d")),
    *(_cifar(f"resnet{6 * n + 2}", n) for n in (3, 5, 7, 9, 18)),
]}


def variant(name: str) -> Variant:
    try:
        return VARIANTS[name]
    except KeyError:
        close = difflib.get_close_matches(name, VARIANTS, n=3, cutoff=0.6)
        hint = f"did you mean {', '.join(close)}?" if close else "see `resnet-edge models`"
        raise BadInput(f"unknown model {name!r}; {hint}") from None


def parameter_count(v: Variant) -> int:
    """Counted on the meta device: exact, and without allocating the weights."""
    with torch.device("meta"):
        return sum(p.numel() for p in v.build(v.default_classes).parameters())


@dataclass
class ModelCard:
    """What a model is, everywhere it goes: checkpoint, ONNX metadata, manifest, bundle."""

    arch: str
    num_classes: int
    preprocess: Preprocess
    class_names: list[str] | None = None
    weights: str = "none"
    weights_sha256: str | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    # {"mean", "std"}: the normalization moved into the graph by `export --fold-normalization`;
    # `preprocess` then says what the folded model takes (RGB in 0..255)
    folded_normalization: dict[str, list[float]] | None = None
    # "probabilities": a Softmax ends the graph (`export --softmax`), what nvinfer's classifier
    # parser reads; every backend, gate and golden output then compares probabilities
    output: str = "logits"

    def to_dict(self) -> dict[str, Any]:
        return {"arch": self.arch, "num_classes": self.num_classes,
                "preprocess": self.preprocess.to_dict(), "class_names": self.class_names,
                "weights": self.weights, "weights_sha256": self.weights_sha256,
                "metrics": self.metrics, "folded_normalization": self.folded_normalization,
                "output": self.output}

    @classmethod
    def from_dict(cls, data: Any, where: str = "the model card") -> "ModelCard":
        """A card read from a checkpoint or ONNX metadata, every field checked (exit 2 if not)."""
        if not isinstance(data, dict):
            raise BadInput(f"{where} is not a model card (a JSON object); re-export the model")
        required, optional = {"arch", "num_classes", "preprocess"}, set(CARD_OPTIONAL)
        missing, extra = required - set(data), set(data) - required - optional
        if missing or extra:
            which = f"misses {sorted(missing)[0]!r}" if missing else f"has unknown key {sorted(extra)[0]!r}"
            raise BadInput(f"{where} {which}; re-export the model with resnet-edge")
        arch, classes, names = data["arch"], data["num_classes"], data.get("class_names")
        problem = None
        if not isinstance(arch, str) or arch not in VARIANTS:
            problem = f"arch {arch!r} is not a known ResNet (see `resnet-edge models`)"
        elif not isinstance(classes, int) or isinstance(classes, bool) or not 1 <= classes <= MAX_CLASSES:
            problem = f"num_classes {classes!r} is not a whole number in 1..{MAX_CLASSES}"
        elif names is not None and not (isinstance(names, list) and len(names) == classes
                                        and all(isinstance(n, str) and len(n) <= 200 for n in names)):
            problem = f"class_names must be {classes} strings"
        elif not isinstance(data.get("weights", "none"), str):
            problem = "weights must be a string"
        elif data.get("weights_sha256") is not None and not (
                isinstance(data["weights_sha256"], str) and len(data["weights_sha256"]) == 64):
            problem = "weights_sha256 must be 64 hex digits"
        elif not isinstance(data.get("metrics") or {}, dict):
            problem = "metrics must be a JSON object"
        elif data.get("output", "logits") not in OUTPUTS:
            problem = f"output {data.get('output')!r} is not one of {', '.join(OUTPUTS)}"
        elif data.get("folded_normalization") is not None:
            problem = _folded_problem(data["folded_normalization"], data["preprocess"])
        if problem:
            raise BadInput(f"{where}: {problem}")
        return cls(arch=arch, num_classes=classes,
                   preprocess=Preprocess.from_dict(data["preprocess"], where),
                   class_names=names, weights=data.get("weights", "none"),
                   weights_sha256=data.get("weights_sha256"), metrics=data.get("metrics") or {},
                   folded_normalization=data.get("folded_normalization"),
                   output=data.get("output", "logits"))


def _folded_problem(folded: Any, preprocess: Any) -> str | None:
    if not (isinstance(folded, dict) and set(folded) == {"mean", "std"}):
        return "folded_normalization must have exactly mean and std"
    for key in ("mean", "std"):
        if not isinstance(folded[key], list) or len(folded[key]) != 3 or not all(
                isinstance(v, (int, float)) and not isinstance(v, bool) and abs(v) <= 1000
                and v == v for v in folded[key]):
            return f"folded_normalization {key} must be 3 finite numbers"
    if not all(v > 0 for v in folded["std"]):
        return "folded_normalization std must be positive"
    if not isinstance(preprocess, dict) or [list(preprocess.get(k) or []) for k in ("mean", "std")] != [
            list(RAW_PIXELS.mean), list(RAW_PIXELS.std)]:
        return "a folded model takes RGB in 0..255: its preprocess mean must be 0 and std 1/255"
    return None


# ---- normalization in the graph -------------------------------------------------------------

RAW_PIXELS = Preprocess(224, 224, mean=(0.0, 0.0, 0.0), std=(1 / 255,) * 3)  # x * 255: 0..255


class FoldedNormalization(nn.Module):
    """`model` behind torchvision's Normalize, for inputs in 0..255: y = x * a + b per channel,
    a = 1 / (255 std), b = -mean / std. What nvinfer (one scale for every channel) cannot do
    for a per-channel std, the graph does."""

    def __init__(self, model: nn.Module, mean, std):
        super().__init__()
        self.model = model
        std_t = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
        mean_t = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
        # not saved in the state dict: the card's folded_normalization rebuilds them
        self.register_buffer("scale", 1.0 / (255.0 * std_t), persistent=False)
        self.register_buffer("shift", -mean_t / std_t, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x * self.scale + self.shift)


def fold_normalization(model: nn.Module, card: ModelCard) -> tuple[nn.Module, ModelCard]:
    """The model with its normalization in the graph, taking RGB in 0..255, and its card."""
    if card.folded_normalization is not None:
        raise BadInput("this model's normalization is already in its graph; drop "
                       "--fold-normalization")
    p = card.preprocess
    folded = ModelCard(**{**card.__dict__, "folded_normalization": {"mean": list(p.mean),
                                                                    "std": list(p.std)},
                          "preprocess": Preprocess(**{**p.to_dict(), "mean": RAW_PIXELS.mean,
                                                      "std": RAW_PIXELS.std})})
    return FoldedNormalization(model, p.mean, p.std).eval(), folded


class Probabilities(nn.Module):
    """`model` with a Softmax over its classes: the output nvinfer's classifier reads."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.model(x), dim=1)


def add_softmax(model: nn.Module, card: ModelCard) -> tuple[nn.Module, ModelCard]:
    """The model ending in a Softmax, and its card saying so."""
    if card.output == "probabilities":
        raise BadInput("this model already ends in a Softmax; drop --softmax")
    return Probabilities(model).eval(), ModelCard(**{**card.__dict__, "output": "probabilities"})


def with_head(model: nn.Module, card: ModelCard) -> nn.Module:
    """The bare ResNet wrapped as its card says: normalization folded in, a Softmax at the end."""
    if card.folded_normalization is not None:
        model = FoldedNormalization(model, card.folded_normalization["mean"],
                                    card.folded_normalization["std"])
    return Probabilities(model) if card.output == "probabilities" else model


def _unfolded(model: nn.Module) -> nn.Module:
    """The bare ResNet inside whatever with_head wrapped around it."""
    while isinstance(model, (FoldedNormalization, Probabilities)):
        model = model.model
    return model


# ---- loading -------------------------------------------------------------------------------

def looks_like_path(source: str) -> bool:
    return os.sep in source or "/" in source or Path(source).suffix in {".pt", ".pth", ".ckpt", ".bin"}


def load_model(source: str, *, weights: str | None = None, arch: str | None = None,
               num_classes: int | None = None, preprocess: dict[str, Any] | None = None,
               weights_dir: str | os.PathLike | None = None) -> tuple[nn.Module, ModelCard]:
    """A model in eval mode and its card, from a zoo name (+ weights) or a checkpoint path.

    `weights` is a torchvision enum name (DEFAULT, IMAGENET1K_V1, ...), "none" for a seeded
    random init, or a checkpoint path; with a checkpoint as `source` it must be left out.
    `preprocess` overrides fields of the card's Preprocess (input_size, resize, mean, std,
    interpolation), checked like any card; `weights_dir` (or $RESNET_EDGE_WEIGHTS) holds
    torchvision weight files for machines without a network.
    """
    if num_classes is not None and num_classes < 1:
        raise BadInput(f"--num-classes must be at least 1, got {num_classes}")
    if source not in VARIANTS and (looks_like_path(source) or Path(source).exists()):
        model, card = load_checkpoint(source, arch=arch, num_classes=num_classes)
    else:
        v = variant(source)
        if arch is not None and arch != v.name:
            raise BadInput(f"--arch {arch} contradicts the model name {v.name}; drop --arch")
        model, card = _from_zoo(v, weights or "none", num_classes, weights_dir)
    if preprocess:
        if card.folded_normalization is not None and {"mean", "std"} & set(preprocess):
            raise BadInput(f"{source} has its normalization in the graph (it takes RGB in "
                           "0..255), so --mean and --std do not apply; drop them")
        trained = card.preprocess.input_size
        merged = {**card.preprocess.to_dict(), **preprocess}
        card.preprocess = Preprocess.from_dict(merged, "the preprocessing options")
        if card.preprocess.input_size != trained and not card.weights.startswith("none") \
                and not card.weights.startswith("checkpoint:"):
            # a ResNet pools to any size, so this runs; what it is worth there, nobody measured
            warnings.warn(f"{source} was trained at {trained} px ({card.weights}); at "
                          f"{card.preprocess.input_size} px it sees objects at another scale, and "
                          "its accuracy there is unmeasured: check it with parity or eval on "
                          "labelled data", DataWarning, stacklevel=2)
    return model.eval(), card


def _from_zoo(v: Variant, weights: str, num_classes: int | None,
              weights_dir=None) -> tuple[nn.Module, ModelCard]:
    if weights.lower() == "none":
        with torch.random.fork_rng():
            torch.manual_seed(RANDOM_INIT_SEED)
            model = v.build(num_classes or v.default_classes)
        return model, ModelCard(v.name, num_classes or v.default_classes, v.default_preprocess,
                                weights=f"none (random init, seed {RANDOM_INIT_SEED})")
    if looks_like_path(weights) or Path(weights).exists():
        return load_checkpoint(weights, arch=v.name, num_classes=num_classes)
    enum_member = v.resolve_weights(weights)
    classes = len(enum_member.meta["categories"])
    if num_classes is not None and num_classes != classes:
        raise BadInput(f"{v.name} {enum_member.name} weights have {classes} classes, not "
                       f"{num_classes}; fine-tune with `resnet-edge train --pretrained` instead")
    state, cached = torchvision_state(v, enum_member, weights_dir,
                                      instead="--weights none (WEIGHTS=none), a checkpoint path")
    model = v.build(classes)
    load_state_strict(model, state, f"{v.name} {enum_member.name}", cached)
    card = ModelCard(v.name, classes, Preprocess.from_torchvision(enum_member.transforms()),
                     class_names=list(enum_member.meta["categories"]),
                     weights=f"torchvision:{enum_member}",
                     weights_sha256=sha256_file(cached) if cached.exists() else None)
    return model, card


def weights_file(weights_dir, v: Variant, enum_member) -> Path:
    """torchvision's file for `enum_member` in `weights_dir`, named as torchvision names it and
    checked against the sha256 prefix torchvision publishes in that name (resnet18-f37072fd.pth)."""
    name = os.path.basename(enum_member.url)
    path = Path(weights_dir).expanduser() / name
    if not path.is_file():
        raise BadInput(f"{path} not found: --weights-dir holds torchvision weight files under "
                       f"their own names ({name} for {v.name} {enum_member.name})")
    prefix = re.search(r"-([0-9a-f]{8,})\.", name)
    if prefix and not sha256_file(path).startswith(prefix.group(1)):
        raise BadInput(f"{path} does not match the sha256 prefix {prefix.group(1)} in its name: "
                       "damaged or another file; download it again")
    return path


def torchvision_state(v: Variant, enum_member, weights_dir=None, *,
                      instead: str) -> tuple[dict[str, torch.Tensor], Path]:
    """(state dict, file) of torchvision weights: from `weights_dir` when given (or
    $RESNET_EDGE_WEIGHTS), else downloaded into torch's cache. Offline, one line says what else
    the command can take (`instead`)."""
    weights_dir = weights_dir or os.environ.get("RESNET_EDGE_WEIGHTS")
    if weights_dir:
        path = weights_file(weights_dir, v, enum_member)
        return read_checkpoint(path)[0], path
    target = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(enum_member.url)
    try:
        return enum_member.get_state_dict(progress=True, check_hash=True), target
    except (urllib.error.URLError, ConnectionError, TimeoutError) as exc:
        raise BadInput(f"cannot download {v.name} {enum_member.name} weights ({exc}): no network? "
                       f"Use {instead}, a folder of torchvision weight files (--weights-dir), or "
                       f"place {os.path.basename(enum_member.url)} at {target}") from None


def read_checkpoint(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict | None]:
    """(state dict, card dict or None) from this tool's format or a plain state-dict file.

    Always `weights_only=True`: a file that needs arbitrary unpickling is refused, never retried
    unsafely.
    """
    path = Path(path)
    if not path.is_file():
        raise BadInput(f"checkpoint {path} not found; give a path to a .pt/.pth file or a zoo "
                       "name (see `resnet-edge models`)")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        # weights_only refuses a file that names Python globals (classes, functions) to build;
        # any other unpickling error means the bytes are not a checkpoint at all.
        if "global" in str(exc).lower():
            raise BadInput(f"{path} is refused as unsafe: it needs arbitrary code to unpickle, "
                           "and this tool loads only with weights_only=True; re-save it with "
                           "torch.save(model.state_dict(), path)") from None
        raise BadInput(f"{path} is not a PyTorch checkpoint; give a file written by torch.save") from None
    except Exception as exc:  # torch.load surfaces corrupt files as many exception types
        raise BadInput(f"{path} is truncated or not a PyTorch checkpoint ({first_line(exc)}); "
                       "re-save or re-download it") from None
    card = None
    if isinstance(obj, dict) and obj.get("format") == CHECKPOINT_FORMAT:
        obj, card = obj.get("state_dict"), obj.get("card")
        if not isinstance(card, dict):
            raise BadInput(f"{path} is a resnet-edge checkpoint without a model card; re-save it")
    elif isinstance(obj, dict):
        for key in ("state_dict", "model"):  # common trainer layouts around a state dict
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if not (isinstance(obj, dict) and obj and all(isinstance(t, torch.Tensor) for t in obj.values())):
        raise BadInput(f"{path} holds a {type(obj).__name__}, not a state dict; save it with "
                       "torch.save(model.state_dict(), path)")
    for key, tensor in obj.items():  # NaN weights would export and "pass" with NaN logits
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            bad = int((~torch.isfinite(tensor)).sum())
            raise BadInput(f"{path} holds {bad} NaN or inf values in {key}; the weights are "
                           "broken, so this checkpoint is refused")
    return _strip_prefix(obj), card


def load_checkpoint(path: str | os.PathLike, *, arch: str | None = None,
                    num_classes: int | None = None) -> tuple[nn.Module, ModelCard]:
    state, card_dict = read_checkpoint(path)
    if card_dict is not None:
        card = ModelCard.from_dict(card_dict, f"the model card in {path}")
        if arch is not None and arch != card.arch:
            raise BadInput(f"{path} is a {card.arch} checkpoint, not {arch}; drop --arch or "
                           "pick the matching checkpoint")
    else:
        if arch is None:
            raise BadInput(f"{path} is a plain state dict with no model card; say which model "
                           "it is with --arch (e.g. --arch resnet18)")
        v = variant(arch)
        card = ModelCard(v.name, v.default_classes, v.default_preprocess)
    inferred = int(state["fc.weight"].shape[0]) if "fc.weight" in state else card.num_classes
    if num_classes is not None and num_classes != inferred:
        raise BadInput(f"{path} has {inferred} classes (fc.weight {tuple(state['fc.weight'].shape)}), "
                       f"not --num-classes {num_classes}")
    card.num_classes = inferred
    if card.class_names is not None and len(card.class_names) != inferred:
        card.class_names = None
    card.weights = card.weights if card_dict else f"checkpoint:{Path(path).name}"
    card.weights_sha256 = sha256_file(path)
    model = variant(card.arch).build(card.num_classes)
    load_state_strict(model, state, f"{card.arch} with {card.num_classes} classes", path)
    return with_head(model, card), card


def load_state_strict(model: nn.Module, state: dict[str, torch.Tensor], what: str, path) -> None:
    """load_state_dict, but a mismatch names the keys and shapes that differ."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k} {tuple(state[k].shape)} vs {tuple(t.shape)}"
              for k, t in own.items() if k in state and state[k].shape != t.shape]
    problems = [f"{label} {len(keys)}: {', '.join(keys[:3])}{' ...' if len(keys) > 3 else ''}"
                for label, keys in (("missing keys", missing), ("unexpected keys", unexpected),
                                    ("shape mismatches (checkpoint vs model)", shapes)) if keys]
    if problems:
        raise BadInput(f"{path} does not fit {what}: {'; '.join(problems)}; check --arch and "
                       "--num-classes")
    model.load_state_dict(state)


def save_checkpoint(path: str | os.PathLike, model: nn.Module, card: ModelCard,
                    **extra: Any) -> None:
    """This tool's checkpoint: state dict + card (+ extra plain data), loadable weights_only.
    A folded model saves the ResNet's own weights; its card rebuilds the folding."""
    state = {k: v.detach().cpu() for k, v in _unfolded(model).state_dict().items()}
    with atomic_path(path) as tmp:
        torch.save({"format": CHECKPOINT_FORMAT, "state_dict": state, "card": card.to_dict(),
                    **extra}, tmp)


def _strip_prefix(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Drop the `module.` prefix that DataParallel/DDP checkpoints carry."""
    if state and all(k.startswith("module.") for k in state):
        return {k[len("module."):]: v for k, v in state.items()}
    return state
