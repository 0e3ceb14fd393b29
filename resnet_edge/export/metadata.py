"""The ModelCard inside an ONNX file's metadata_props, so any later step can read it back."""

from __future__ import annotations

import json
import os

import onnx

from .. import __version__
from ..zoo import ModelCard

CARD_KEY = "resnet_edge.card"
EXPORT_KEY = "resnet_edge.export"


def write_metadata(model: onnx.ModelProto, card: ModelCard, export_options: dict) -> None:
    values = {CARD_KEY: json.dumps(card.to_dict()),
              EXPORT_KEY: json.dumps({**export_options, "resnet_edge": __version__})}
    kept = [p for p in model.metadata_props if p.key not in values]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    for key, value in values.items():
        model.metadata_props.add(key=key, value=value)


def read_props(model: onnx.ModelProto | str | os.PathLike) -> dict[str, str]:
    if not isinstance(model, onnx.ModelProto):
        model = onnx.load(os.fspath(model), load_external_data=False)
    return {p.key: p.value for p in model.metadata_props}


def read_card(model: onnx.ModelProto | str | os.PathLike) -> ModelCard | None:
    raw = read_props(model).get(CARD_KEY)
    return ModelCard.from_dict(json.loads(raw)) if raw else None


def read_export_options(model: onnx.ModelProto | str | os.PathLike) -> dict:
    raw = read_props(model).get(EXPORT_KEY)
    return json.loads(raw) if raw else {}
