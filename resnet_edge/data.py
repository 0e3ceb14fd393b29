"""Datasets and the Preprocess spec.

`Preprocess` is defined once and applied by one function for every consumer (training-time
evaluation, calibration, parity, the on-device check). It travels in the checkpoint, the ONNX
metadata and the manifest, and is read back from there; no command re-derives it.

Over 400 lines because every data spec (digits, cifar10, image folders, npy) ends in the one
loader and the one Preprocess, which is what keeps them from drifting apart.
"""

from __future__ import annotations

import functools
import hashlib
import math
import os
import re
import urllib.error
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torchvision.transforms import InterpolationMode
from torchvision.transforms._presets import ImageClassification

from .artifacts import sha256_file
from .errors import BadInput, DataNote, DataWarning, first_line

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2470, 0.2435, 0.2616)


# Documented bounds for a model card's preprocessing: ResNets downsample 32x, so a side below 8
# has nothing left; 4096 is far beyond any classifier and keeps a bad card from asking for
# gigabytes. Interpolations are the ones torchvision resizes tensors and images with.
PREPROCESS_BOUNDS = {"input_size": (8, 2048), "resize": (8, 4096)}
INTERPOLATIONS = ("nearest", "nearest-exact", "bilinear", "bicubic")


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _preprocess_problem(data: dict) -> str | None:
    for key, (low, high) in PREPROCESS_BOUNDS.items():
        value = data[key]
        if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
            return f"{key} {value!r} is not a whole number in {low}..{high}"
    if data["resize"] < data["input_size"]:
        return f"resize {data['resize']} is smaller than the crop input_size {data['input_size']}"
    for key in ("mean", "std"):
        value = data[key]
        if not (isinstance(value, (list, tuple)) and len(value) == 3 and all(_number(v) for v in value)):
            return f"{key} {value!r} must be 3 finite numbers (one per RGB channel)"
        if key == "std" and not all(0 < v <= 1000 for v in value):
            return f"std {list(value)} must be positive (dividing by it is the normalization)"
        if key == "mean" and not all(abs(v) <= 1000 for v in value):
            return f"mean {list(value)} is outside -1000..1000"
    if data["interpolation"] not in INTERPOLATIONS:
        return f"interpolation {data['interpolation']!r} is not one of {', '.join(INTERPOLATIONS)}"
    if not isinstance(data["antialias"], bool):
        return f"antialias {data['antialias']!r} must be true or false"
    if data["channel_order"] != "RGB":
        return f"channel_order {data['channel_order']!r} is not RGB"
    return None


@dataclass(frozen=True)
class Preprocess:
    """Resize the short side, center-crop a square, scale to [0, 1], normalize (RGB, CHW)."""

    input_size: int
    resize: int
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    interpolation: str = "bilinear"
    antialias: bool = True
    channel_order: str = field(default="RGB")

    def __post_init__(self):
        object.__setattr__(self, "mean", tuple(float(v) for v in self.mean))
        object.__setattr__(self, "std", tuple(float(v) for v in self.std))

    @classmethod
    def from_torchvision(cls, preset: ImageClassification) -> "Preprocess":
        """The Preprocess equal to a torchvision weights' `transforms()`."""
        return cls(input_size=preset.crop_size[0], resize=preset.resize_size[0],
                   mean=tuple(preset.mean), std=tuple(preset.std),
                   interpolation=preset.interpolation.value, antialias=bool(preset.antialias))

    @classmethod
    def from_dict(cls, data: Any, where: str = "the model card") -> "Preprocess":
        """A Preprocess read from a card, every field checked against PREPROCESS_BOUNDS."""
        names = set(cls.__dataclass_fields__)
        if not isinstance(data, dict) or set(data) != names:
            keys = sorted(set(data) ^ names) if isinstance(data, dict) else ["(not an object)"]
            raise BadInput(f"{where}: preprocess must have exactly {', '.join(sorted(names))} "
                           f"(differs at {keys[0]!r}); re-export the model")
        problem = _preprocess_problem(data)
        if problem:
            raise BadInput(f"{where}: preprocess {problem}")
        return cls(**data)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return (3, self.input_size, self.input_size)

    def transform(self) -> ImageClassification:
        # torchvision's own preset, so a Preprocess made from weights.transforms() is that
        # transform exactly: the same resize, antialiasing and crop as the published accuracy.
        return ImageClassification(crop_size=self.input_size, resize_size=self.resize,
                                   mean=self.mean, std=self.std,
                                   interpolation=InterpolationMode(self.interpolation),
                                   antialias=self.antialias)

    def __call__(self, images) -> torch.Tensor:
        """A PIL image, a uint8 tensor (..., 3, H, W) or a float tensor in [0, 1] -> float32."""
        return self.transform()(images)


# ---- data specs ----------------------------------------------------------------------------
# One syntax for every command that reads data:
#   digits[:train|val|test]   scikit-learn's bundled 8x8 digits (offline default)
#   cifar10[:train|test]      torchvision CIFAR-10, downloaded to the data cache on first use
#   imagefolder:PATH          one sub-folder per class
#   images:PATH               images without labels, flat or nested (calibration, latency)
#   npy:PATH[,LABELS]         N x C x H x W float32, already preprocessed; optional labels .npy
#   random:N                  seeded noise, no labels (latency and smoke tests only)

SPEC_SYNTAX = ("digits[:train|val|test], cifar10[:train|test], imagefolder:PATH, images:PATH, "
               "npy:PATH[,LABELS.npy], random:N")
DIGITS_SPLITS = {"train": (0, 1200), "val": (1200, 1400), "test": (1400, 1797)}
SPLIT_SEED = 0
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp", ".gif"}


def data_cache() -> Path:
    return Path(os.environ.get("RESNET_EDGE_DATA", Path.home() / ".cache" / "resnet-edge" / "data"))


class Source(torch.utils.data.Dataset):
    """Raw images (PIL images or float tensors in [0, 1]) with labels where known.

    `preprocessed` sources (npy, random) already hold model inputs and skip Preprocess.
    """

    spec: str = ""
    class_names: list[str] | None = None
    labels: np.ndarray | None = None
    preprocessed: bool = False
    summary: str = ""
    splits: tuple[str, ...] = ()
    mirror_ok: bool = True  # False where a flipped image means something else (digits)
    skipped: tuple = ()  # files of a folder left out as not images: named in reports

    @property
    def has_labels(self) -> bool:
        return self.labels is not None

    @property
    def num_classes(self) -> int | None:
        return len(self.class_names) if self.class_names else None

    def image(self, index: int):
        raise NotImplementedError

    def __getitem__(self, index: int):
        label = int(self.labels[index]) if self.labels is not None else -1
        return self.image(index), label

    def digest(self, n: int) -> str:
        """sha256 of the first `n` images and their labels, by content: the same set copied to
        another path (another CI workspace) has the same digest, and a changed image another."""
        hasher = hashlib.sha256()
        for chunk in self._content(n):
            hasher.update(chunk)
        if self.labels is not None:
            hasher.update(np.ascontiguousarray(np.asarray(self.labels[:n], dtype=np.int64)).tobytes())
        return hasher.hexdigest()

    def _content(self, n: int):
        for index in range(n):
            yield np.ascontiguousarray(np.asarray(self.image(index))).tobytes()


class TensorSource(Source):
    def __init__(self, spec, images: torch.Tensor, labels, class_names, *, preprocessed=False,
                 summary="", splits=()):
        self.spec, self.images, self.labels, self.class_names = spec, images, labels, class_names
        self.preprocessed, self.summary, self.splits = preprocessed, summary, splits

    def __len__(self) -> int:
        return len(self.images)

    def image(self, index: int):
        return self.images[index]

    def _content(self, n: int):
        yield np.ascontiguousarray(self.images[:n].numpy()).tobytes()


class FileSource(Source):
    def __init__(self, spec, files: list[Path], labels, class_names, summary, skipped=()):
        self.spec, self.files, self.labels = spec, files, labels
        self.class_names, self.summary = class_names, summary
        self.skipped = list(skipped)  # files left out as not images: named in reports

    def __len__(self) -> int:
        return len(self.files)

    def _content(self, n: int):
        for path in self.files[:n]:  # the bytes, not the path: a copy elsewhere is the same set
            yield sha256_file(path).encode()

    def image(self, index: int):
        from PIL import Image
        path = self.files[index]
        try:
            with Image.open(path) as img:
                return img.convert("RGB")  # grayscale, palette and RGBA all become RGB
        except (OSError, Image.DecompressionBombError, SyntaxError, ValueError) as exc:
            # decoded in a loader worker: say which file, in a message that survives the trip
            raise BadInput(f"{path} cannot be decoded ({first_line(exc)}); remove or re-save it") from None


class CifarSource(Source):
    def __init__(self, spec, dataset):
        self.spec, self.dataset = spec, dataset
        self.labels = np.asarray(dataset.targets)
        self.class_names = list(dataset.classes)
        self.summary = f"{len(dataset)} images, 10 classes"
        self.splits = ("train", "test")

    def __len__(self) -> int:
        return len(self.dataset)

    def image(self, index: int):
        return self.dataset[index][0]

    def _content(self, n: int):
        yield np.ascontiguousarray(self.dataset.data[:n]).tobytes()


BUILT_IN = ("digits", "cifar10")  # datasets with named splits a card can point back to
EXAMPLE = {"train": "images:/data/calib", "test": "imagefolder:/data/val"}


def trained_on(card) -> str | None:
    """The built-in dataset the model was trained on here, as its card says, or None."""
    match = re.fullmatch(rf"trained with resnet-edge on ({'|'.join(BUILT_IN)})(:\w+)? from .*",
                         card.weights)
    return match[1] if match else None


def _trained_folder(card, split: str) -> tuple[Path, list[Path]] | None:
    """For a model trained here on imagefolder:X: (X, the folders of X that serve `split`, in
    order of choice): X/test, else X/val, for evaluation (never the training images); X/train,
    else X, for calibration."""
    match = re.fullmatch(r"trained with resnet-edge on imagefolder:(.+) from .*", card.weights)
    if not match:
        return None
    root = Path(match[1]).expanduser()
    return root, [root / "test", root / "val"] if split == "test" else [root / "train", root]


def data_for(card, split: str, spec: str | None, option: str) -> str:
    """`spec`, or, where none was given, the `split` of the data the model was trained on here,
    as its card says: a built-in dataset's split, or the held-out folder of an image folder
    (`_trained_folder`). Anything else has no default, and its data is required: never
    checked silently on data it was not made for."""
    if spec:
        return spec
    dataset = trained_on(card)
    if dataset:
        warnings.warn(f"{option} not given: {dataset}:{split}, the {split} split of {dataset}, which "
                      "the model was trained on here (its card says so)", DataNote, stacklevel=2)
        return f"{dataset}:{split}"
    trained = _trained_folder(card, split)
    if trained:
        root, choices = trained
        folder = next((c for c in choices if c.is_dir()), None)
        if folder is None:  # the path the card recorded, on the machine that trained it
            raise BadInput(f"{option} is needed: the model was trained here on imagefolder:{root}, "
                           f"and {' or '.join(str(c) for c in choices)} is not on this machine; "
                           f"give {option} imagefolder:PATH")
        held = "" if split == "train" else ", the images training held out to pick the best epoch"
        warnings.warn(f"{option} not given: imagefolder:{folder}{held}, from the folder the model "
                      f"was trained on (its card records the path); give {option} to choose",
                      DataNote, stacklevel=2)
        return f"imagefolder:{folder}"
    raise BadInput(f"{option} is needed: {card.arch}'s card says its weights are "
                   f"'{card.weights}', not a model trained here on {' or '.join(BUILT_IN)}, so "
                   f"there is no data to default to; e.g. {option} {EXAMPLE[split]}")


def open_data(spec: str, *, input_shape: tuple[int, int, int] | None = None,
              download: bool = True) -> Source:
    """Parse a data spec and open the source it names, or fail with the syntax."""
    kind, _, arg = spec.partition(":")
    if kind == "digits":
        return _digits(spec, arg or "test")
    if kind == "cifar10":
        return _cifar10(spec, arg or "test", download)
    if kind == "imagefolder" and arg:
        return _imagefolder(spec, Path(arg).expanduser())
    if kind == "images" and arg:
        return _images(spec, Path(arg).expanduser())
    if kind == "npy" and arg:
        return _npy(spec, arg, input_shape)
    if kind == "random" and arg:
        return _random(spec, arg, input_shape)
    raise BadInput(f"unknown data spec {spec!r}; use one of {SPEC_SYNTAX}")


def _check_split(name: str, split: str, splits) -> None:
    if split not in splits:
        raise BadInput(f"{name} has no split {split!r}; choose one of {', '.join(splits)}")


def _digits(spec: str, split: str) -> Source:
    from sklearn.datasets import load_digits
    _check_split("digits", split, DIGITS_SPLITS)
    digits = load_digits()
    order = np.random.default_rng(SPLIT_SEED).permutation(len(digits.target))
    lo, hi = DIGITS_SPLITS[split]
    chosen = order[lo:hi]
    # 8x8 intensities 0..16 -> [0, 1], replicated to 3 channels; Preprocess upsamples them.
    images = torch.from_numpy(digits.images[chosen] / 16.0).float().unsqueeze(1).repeat(1, 3, 1, 1)
    source = TensorSource(spec, images, digits.target[chosen].astype(np.int64),
                          [str(c) for c in range(10)],
                          summary=f"{len(chosen)} images, 10 classes (scikit-learn digits, {split})",
                          splits=tuple(DIGITS_SPLITS))
    source.mirror_ok = False
    return source


def _cifar10(spec: str, split: str, download: bool) -> Source:
    import torchvision
    _check_split("cifar10", split, ("train", "test"))
    root = data_cache() / "cifar10"
    try:
        dataset = torchvision.datasets.CIFAR10(root, train=split == "train", download=download)
    except (urllib.error.URLError, ConnectionError, TimeoutError, RuntimeError) as exc:
        raise BadInput(f"CIFAR-10 is not in {root} and cannot be downloaded ({first_line(exc)}); "
                       f"place cifar-10-python.tar.gz there, set RESNET_EDGE_DATA, or use "
                       "--data digits offline") from None
    return CifarSource(spec, dataset)


def _say_skipped(root: Path, skipped: list[Path], loose: int = 0) -> str:
    """The summary's words for what was left out, also given as a DataWarning."""
    def files(n: int) -> str:
        return f"{n} file{'' if n == 1 else 's'}"
    words = []
    if skipped:
        words.append(f"{files(len(skipped))} skipped as not images (first: {skipped[0]})")
    if loose:
        words.append(f"{files(loose)} beside the class folders ignored")
    if words:
        warnings.warn(f"{root}: {', '.join(words)}", DataWarning, stacklevel=3)
    return "".join(f", {w}" for w in words)


def _scan_images(folder: Path) -> tuple[list[Path], list[Path]]:
    """(images under `folder`, at any depth, in a fixed order; files skipped as not images)."""
    from PIL import Image, UnidentifiedImageError
    files, skipped = [], []
    for path in sorted(folder.rglob("*")):
        if not path.is_file() or any(part.startswith(".") for part in path.relative_to(folder).parts):
            continue
        try:
            if path.suffix.lower() not in IMAGE_SUFFIXES:
                raise UnidentifiedImageError
            with Image.open(path) as img:
                img.verify()
        except Image.DecompressionBombError as exc:  # refused loudly, never skipped quietly
            raise BadInput(f"{path} is refused: {first_line(exc)}") from None
        except (UnidentifiedImageError, OSError, SyntaxError):
            skipped.append(path)
            continue
        files.append(path)
    return files, skipped


def _images(spec: str, root: Path) -> Source:
    """A folder of images without labels, flat or nested: calibration and latency data."""
    if not root.is_dir():
        raise BadInput(f"image folder {root} not found; give a folder of images")
    files, skipped = _scan_images(root)
    if not files:
        raise BadInput(f"{root} holds no images ({len(skipped)} other files); give a folder of "
                       ".jpg/.png images, at any depth")
    summary = f"{len(files)} images without labels" + _say_skipped(root, skipped)
    return FileSource(spec, files, None, None, summary, skipped)


def _imagefolder(spec: str, root: Path) -> Source:
    if not root.is_dir():
        raise BadInput(f"image folder {root} not found; give a folder with one sub-folder per class")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    files, labels, skipped = [], [], []
    for label, name in enumerate(classes):
        found, skipped_here = _scan_images(root / name)
        files += found
        labels += [label] * len(found)
        skipped += skipped_here
    if not files:
        raise BadInput(f"image folder {root} has no images in class sub-folders "
                       f"({len(classes)} sub-folders, {len(skipped)} non-image files); expected "
                       f"{root}/<class>/<image>.jpg")
    loose = sum(1 for p in root.iterdir() if p.is_file() and not p.name.startswith("."))
    summary = f"{len(files)} images, {len(classes)} classes" + _say_skipped(root, skipped, loose)
    return FileSource(spec, files, np.asarray(labels, dtype=np.int64), classes, summary, skipped)


def _npy(spec: str, arg: str, input_shape) -> Source:
    image_path, _, label_path = arg.partition(",")
    try:
        images = np.load(image_path, allow_pickle=False, mmap_mode="r")
        labels = np.load(label_path, allow_pickle=False) if label_path else None
    except (OSError, ValueError, EOFError) as exc:
        raise BadInput(f"cannot read {spec}: {first_line(exc)}") from None
    if images.ndim != 4 or images.dtype != np.float32:
        raise BadInput(f"{image_path} holds {images.dtype} {images.shape}; expected float32 "
                       "N x C x H x W, already preprocessed")
    if len(images) == 0:
        raise BadInput(f"{image_path} holds no images")
    if input_shape is not None and tuple(images.shape[1:]) != tuple(input_shape):
        raise BadInput(f"{image_path} images are {tuple(images.shape[1:])}, the model takes "
                       f"{tuple(input_shape)}; preprocess them with the model's Preprocess")
    for start in range(0, len(images), 1024):  # chunked: a memory map stays a memory map
        finite = np.isfinite(images[start:start + 1024]).reshape(-1, int(np.prod(images.shape[1:]))).all(1)
        if not finite.all():
            index = start + int(np.flatnonzero(~finite)[0])
            raise BadInput(f"{image_path} image {index} holds NaN or inf values; every input must "
                           "be finite")
    if labels is not None:
        if labels.shape != (len(images),):
            raise BadInput(f"{label_path} has shape {labels.shape}; expected ({len(images)},) labels")
        if labels.dtype.kind not in "iu":
            raise BadInput(f"{label_path} holds {labels.dtype} labels; labels must be whole numbers "
                           "(class indices)")
        if labels.min() < 0:
            index = int(np.flatnonzero(labels < 0)[0])
            raise BadInput(f"{label_path} label {index} is {labels[index]}; labels are class "
                           "indices from 0")
        labels = labels.astype(np.int64)
    images = np.array(images)  # out of the memory map, writable
    # labels are class indices: any subset of the model's classes (match_classes checks them)
    return TensorSource(spec, torch.from_numpy(images), labels, None,
                        preprocessed=True, summary=f"{len(images)} preprocessed arrays")


class RandomSource(Source):
    """Seeded noise made one image at a time, so `random:100000000 --limit 8` makes 8."""

    preprocessed = True

    def __init__(self, spec: str, count: int, input_shape):
        self.spec, self.count, self.input_shape = spec, count, tuple(input_shape)
        self.summary = f"{count} seeded random inputs, no labels"

    def __len__(self) -> int:
        return self.count

    def image(self, index: int):
        return torch.randn(self.input_shape, generator=torch.Generator().manual_seed(index))

    def _content(self, n: int):  # seeded: the spec and the shape are the images
        yield f"random {n} {self.input_shape}".encode()


def _random(spec: str, arg: str, input_shape) -> Source:
    if not index_text(arg) or not 1 <= int(arg) <= 10**9:
        raise BadInput(f"random:N needs a count from 1 to 1000000000, got {arg!r}")
    if input_shape is None:
        raise BadInput("random:N needs a model to take its input shape from")
    return RandomSource(spec, int(arg), input_shape)


class _Prepared(torch.utils.data.Dataset):
    def __init__(self, source: Source, preprocess: Preprocess, augment=None):
        self.source, self.preprocess, self.augment = source, preprocess, augment

    def __len__(self):
        return len(self.source)

    def __getitem__(self, index):
        image, label = self.source[index]
        x = image if self.source.preprocessed else self.preprocess(image)
        return (self.augment(x) if self.augment else x), label


def batches(source: Source, preprocess: Preprocess, batch_size: int, *,
            indices=None, shuffle: bool = False, seed: int = 0, augment=None,
            workers: int | None = None, sampler=None):
    """Preprocessed (inputs, labels) batches; labels are -1 where the source has none."""
    loader = iter(_loader(source, preprocess, batch_size, indices=indices, shuffle=shuffle,
                          seed=seed, augment=augment, workers=workers, sampler=sampler))
    try:
        yield from loader
    except BaseException:
        # The iterator shuts its workers down when it runs out, not when one of them fails; the
        # garbage collector that ends it later closes its queues first, and each join then
        # waits out a 5 s timeout (in-process callers: the Python API, the tests).
        getattr(loader, "_shutdown_workers", lambda: None)()
        raise


def default_workers() -> int:
    """Loader processes for decoding files: one fewer than the cores this process may use (the
    main process trains), at most 4; none on one core. Four on a 2-core runner fought the
    training for the CPU."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(0, min(4, cores - 1))


def _loader(source: Source, preprocess: Preprocess, batch_size: int, *,
            indices=None, shuffle: bool = False, seed: int = 0, augment=None,
            workers: int | None = None, sampler=None) -> torch.utils.data.DataLoader:
    dataset = _Prepared(source, preprocess, augment)
    if indices is not None:
        dataset = torch.utils.data.Subset(dataset, list(indices))
    if workers is None:  # decoding files is worth worker processes; in-memory tensors are not
        workers = default_workers() if isinstance(source, FileSource) else 0
    return torch.utils.data.DataLoader(
        dataset, batch_size=batch_size, shuffle=shuffle and sampler is None, sampler=sampler,
        num_workers=workers,
        generator=torch.Generator().manual_seed(seed) if shuffle and sampler is None else None)


def index_text(text: str) -> bool:
    """Whether `text` names a class index: ASCII decimal digits as the index prints (no "00",
    no "٣" or "１" or "²", which str.isdigit takes and int() reads or refuses)."""
    return re.fullmatch(r"0|[1-9][0-9]{0,8}", text) is not None


def match_classes(source: Source, num_classes: int, class_names: list[str] | None = None,
                  what: str = "the model") -> None:
    """Make evaluation labels the model's class indices. The data may hold a subset of the
    model's classes: class folders named as the model's classes (or as class indices) map by
    name, folders as many as the model's classes map in order, index labels are kept; anything
    else is refused. Reports say when accuracy is over a subset."""
    if not source.has_labels:
        return
    names = source.class_names
    if names:
        synsets = imagenet_synsets() if imagenet_classes(num_classes, class_names) else {}
        if class_names and set(names) <= set(class_names):
            mapping = [class_names.index(n) for n in names]
        elif synsets and set(names) <= set(synsets):
            mapping = [synsets[n] for n in names]  # an ImageNet copy: folders named by WordNet ID
        elif all(index_text(n) and int(n) < num_classes for n in names):
            mapping = [int(n) for n in names]
        elif len(names) == num_classes:
            mapping = list(range(num_classes))
        else:
            raise BadInput(f"{source.spec} has {len(names)} classes ({', '.join(names[:3])}"
                           f"{', ...' if len(names) > 3 else ''}) that match neither the class "
                           f"names of {what} nor its {num_classes} class indices; name the class "
                           "folders as the model's classes")
        source.labels = np.asarray(mapping, dtype=np.int64)[source.labels]
        source.class_names = None  # labels are the model's class indices from here on
    labels = np.asarray(source.labels)
    if len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
        raise BadInput(f"{source.spec} has labels outside 0..{num_classes - 1}, the classes of "
                       f"{what}")


def imagenet_classes(num_classes: int, class_names: list[str] | None) -> bool:
    """Whether a model's outputs are ImageNet-1k's classes in torchvision's order: 1000 of them,
    named as torchvision names them (or not named)."""
    from torchvision.models._meta import _IMAGENET_CATEGORIES
    return num_classes == 1000 and (class_names is None or list(class_names) == list(_IMAGENET_CATEGORIES))


@functools.lru_cache(maxsize=1)
def imagenet_synsets() -> dict[str, int]:
    """WordNet ID -> class index for ImageNet-1k (resnet_edge/imagenet_synsets.txt): what an
    ImageNet copy's class folders are named (n01440764 is 0, tench). Names cannot stand in for
    them: ImageNet's word lists name two classes alike ("crane", "maillot"), and copies rename
    them differently."""
    text = (Path(__file__).with_name("imagenet_synsets.txt")).read_text()
    ids = [line for line in text.splitlines() if line and not line.startswith("#")]
    return {wnid: index for index, wnid in enumerate(ids)}


def check_classes(source: Source, num_classes: int, what: str = "the model") -> None:
    """Training: the data's classes are the model's classes, all of them, in order."""
    if not source.has_labels:
        return
    if source.num_classes is not None and source.num_classes != num_classes:
        raise BadInput(f"{source.spec} has {source.num_classes} classes but {what} has "
                       f"{num_classes}; use data with the same classes or retrain")
    labels = np.asarray(source.labels)
    if len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
        raise BadInput(f"{source.spec} has labels outside 0..{num_classes - 1}, the classes of "
                       f"{what}")
