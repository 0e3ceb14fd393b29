"""The ModelCard inside an ONNX file's metadata_props, so any later step can read it back; and
the one place an ONNX file from disk is parsed."""

from __future__ import annotations

import json
import os
import re
import stat

import onnx

from .. import __version__
from ..errors import BadInput, first_line
from ..zoo import ModelCard

CARD_KEY = "resnet_edge.card"
EXPORT_KEY = "resnet_edge.export"
QUANT_KEY = "resnet_edge.quantization"


def load_onnx(path: str | os.PathLike, *, weights: bool = True) -> onnx.ModelProto:
    """An ONNX file from disk, or one line saying it is missing or not ONNX (exit 2). Only a
    regular file: onnx.load would wait forever on a FIFO."""
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):
            raise BadInput(f"{path} is not a regular file; give an ONNX file")
        return onnx.load(os.fspath(path), load_external_data=weights)
    except FileNotFoundError:
        raise BadInput(f"{path} not found") from None
    except OSError:
        raise
    except Exception as exc:  # protobuf's DecodeError and friends: the bytes are not a model
        raise BadInput(f"{path} is not a readable ONNX file ({first_line(exc)}); export it "
                       "again") from None


def module_of(node: onnx.NodeProto) -> str:
    """The PyTorch module an ONNX node came from ('layer1.1.conv1' for a Conv the exporter
    fused with layer1.1.bn1), from the dynamo exporter's name scopes or a TorchScript node
    name (/layer1/layer1.1/conv1/Conv); '' if neither says."""
    scopes = {p.key: p.value for p in node.metadata_props}.get("pkg.torch.onnx.name_scopes")
    if scopes:
        names = json.loads(scopes.replace("'", '"'))
        module = names[-2] if len(names) > 1 else names[-1]
    elif node.name.startswith("/") and node.name.count("/") > 1:
        module = node.name.strip("/").split("/")[-2]
    else:
        return ""
    return re.sub(r"downsample\.1$", "downsample.0", re.sub(r"bn(\d)$", r"conv\1", module))


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
        model = load_onnx(model, weights=False)
    return {p.key: p.value for p in model.metadata_props}


def _json_prop(model, key: str, what: str):
    raw = read_props(model).get(key)
    if not raw:
        return None
    try:
        return json.loads(raw)
    except json.JSONDecodeError:
        where = model if not isinstance(model, onnx.ModelProto) else "the ONNX model"
        raise BadInput(f"{where}: its {what} metadata is not JSON; export it again") from None


def quantization_info(onnx_path) -> dict:
    """What `calibrate` recorded in an int8 model (recipe, method, samples), or {}."""
    raw = read_props(onnx_path).get(QUANT_KEY)
    return json.loads(raw) if raw else {}


def read_card(model: onnx.ModelProto | str | os.PathLike) -> ModelCard | None:
    data = _json_prop(model, CARD_KEY, "model card")
    where = model if not isinstance(model, onnx.ModelProto) else "the ONNX model"
    return None if data is None else ModelCard.from_dict(data, f"the model card in {where}")


def read_export_options(model: onnx.ModelProto | str | os.PathLike) -> dict:
    return _json_prop(model, EXPORT_KEY, "export options") or {}


def opset_of(model: onnx.ModelProto | str | os.PathLike) -> int:
    """The default-domain ONNX opset a model (or model file) declares."""
    if not isinstance(model, onnx.ModelProto):
        model = load_onnx(model, weights=False)
    return max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
