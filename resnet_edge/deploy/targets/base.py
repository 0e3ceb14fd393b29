"""What every deployment target is: the TensorRT it builds with and what it reads, and three
hooks a target family fills in (what it refuses, what files it adds, what its README says).
The steps every bundle shares (golden data, manifest, signing, archive) are deploy's, not a
target's."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from ...errors import BadInput


@dataclass(frozen=True)
class Packing:
    """What a target's files are made from: the bundle's folder as it is being filled, and
    what make_bundle already read of the work dir (once)."""
    stage: Path
    root: str  # the bundle's name, its folder's too
    workdir: Path
    card: object  # the model card
    profile: dict  # the batch profile (min, opt, max, static)
    names: list[str]  # class names, in class order
    precisions: list[str]
    files: list[str]  # what the bundle packs from the work dir
    graph: object  # model.onnx's graph: its tensor names and shapes
    sides: dict[str, list[str]]  # each ONNX file's external-data files
    options: dict = field(default_factory=dict)  # the target's own options (Target.takes)


@dataclass(frozen=True)
class Target:
    """A bundle target: `tensorrt` the version its engines are built with, `max_opset` the
    highest ONNX opset its ONNX parser reads, `cuda_python` the range matching its CUDA (None
    where only the driver decides), `jetson` whether it runs on a Jetson (DLA, JetPack's Python)."""
    name: str
    tensorrt: str
    max_opset: int
    about: str
    cuda_python: str | None
    jetson: bool
    serve: ClassVar[str | None] = None  # the server whose files the target adds, if any
    takes: ClassVar[dict] = {}  # the target's own options (named as the command line's) and defaults

    def check_model(self, card, where: str) -> None:
        """Refuse, before any work, a model this target cannot serve (BadInput)."""

    def check_options(self, options: dict, precisions: list[str], workdir: Path) -> None:
        """Refuse, before any work, option values this target cannot use (BadInput)."""

    def add_files(self, packing: Packing) -> dict | None:
        """Write what the target adds to the bundle; what bundle.json records of it."""
        return None

    def readme(self, root: str, serve: dict | None) -> str:
        """The target's own section of the bundle's README."""
        return ""


def refuse_foreign_options(target: Target, options: dict, targets: dict[str, Target]) -> None:
    """An option another target takes, given with this one, is refused naming its target."""
    for option, value in options.items():
        owner = next(t for t in targets.values() if option in t.takes)
        if option not in target.takes and value != owner.takes[option]:
            raise BadInput(f"--{option.replace('_', '-')} goes with --target {owner.name}")
