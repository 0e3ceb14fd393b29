"""Stand-ins for the `tensorrt` Python package and cuda-python's CUDA runtime module, generated
from NVIDIA's own API surface of each TensorRT release (tests/tensorrt_api_surface/, copied from
shared/reference/tensorrt-api-surface/: every class and enum of the bindings with the names each
defines, extracted from NVIDIA/TensorRT at the commit named in each file).

What they check: names, signatures and version gating. A release's stand-in has exactly the
classes, enum values, methods and properties that release's bindings define; touching anything
else raises the AttributeError a device would raise. Every call is bound to the release's
pybind11 signatures (`signatures` in the surface file: parameter names, order, defaults, types,
overloads) as pybind11 binds it, so a wrong keyword, a missing argument, a plain int where an
enum is required or a str where an int is required is the TypeError a device would raise, and a
write to a read-only property or of the wrong type fails too. Every call and property write is
recorded so a test can say what each release received. A handful of rules NVIDIA documents are
enforced so the project's decisions are exercised end to end:

- the 8.x ONNX parser needs an EXPLICIT_BATCH network;
- strongly typed networks take no precision flags and no calibrator;
- a Q/DQ network built weakly typed needs the INT8 flag;
- a calibration cache whose header names another TensorRT version is not used (calibration then
  asks for batches);
- DLA builds need fp16/int8 and static shapes, on a core the device has;
- hardware compatibility needs compute capability 8.0 or newer;
- a version-compatible engine loads only with engine_host_code_allowed;
- an engine loads only on the TensorRT and GPU it was built for;
- input shapes outside the optimization profile are refused.

Numerics, kernels and timing are not modelled (the stand-in "engine" returns a fixed function of
its input so data movement can be checked). The @pytest.mark.tensorrt tests on a real GPU stay,
and are the only proof of behaviour.
"""

from __future__ import annotations

import enum
import importlib.machinery
import json
import os
import re
import sys
import types
import warnings
from pathlib import Path

import numpy as np

SURFACE_DIR = Path(__file__).resolve().parent / "tensorrt_api_surface"
FAMILIES = ("8.5.3", "8.6.1", "10.3.0", "10.16.0", "11.1.0")
ENGINE_MAGIC = b"STANDIN-ENGINE\n"
TIMING_MAGIC = b"STANDIN-TIMING-CACHE\n"
_UPPER = re.compile(r"[A-Z][A-Z0-9_]*")
_ENUM_LEFTOVERS = {"log", "__repr__", "__str__"}  # regex leftovers on some enum classes


def surface(version: str) -> dict:
    return json.loads((SURFACE_DIR / f"tensorrt-{version}.json").read_text())


def version_code(version: str) -> int:
    """NV_TENSORRT_VERSION as a calibration cache header spells it (8.5.3 -> 8503)."""
    major, minor, patch = (int(p) for p in re.findall(r"\d+", version)[:3])
    return major * 1000 + minor * 100 + patch if major < 10 else major * 10000 + minor * 100 + patch


class Calls(list):
    """(what, args, kwargs) of every call and property write, in order."""

    def add(self, what: str, *args, **kwargs) -> None:
        self.append((what, args, kwargs))

    def named(self, what: str) -> list[tuple]:
        return [c for c in self if c[0] == what]

    def args_of(self, what: str) -> list[tuple]:
        return [c[1] for c in self.named(what)]


class Device:
    """The one GPU both stand-ins see: name, compute capability, DLA cores, the CUDA version its
    driver supports, and its memory (allocations by base address)."""

    def __init__(self, name: str = "Orin", capability: str = "8.7", dla_cores: int = 2,
                 driver: int = 12060):
        self.name, self.capability, self.dla_cores, self.driver = name, capability, dla_cores, driver
        self.memory: dict[int, bytearray] = {}
        self.streams: set[int] = set()
        # a stream being captured into a CUDA graph: the work enqueued on it, not yet run
        self.capturing: dict[int, list] = {}
        self._next = 0x7000_0000

    def alloc(self, nbytes: int) -> int:
        ptr = self._next
        self._next += max(nbytes, 1) + 256
        self.memory[ptr] = bytearray(nbytes)
        return ptr

    def buffer(self, ptr: int, nbytes: int) -> memoryview:
        if ptr not in self.memory:
            raise RuntimeError(f"illegal address 0x{ptr:x}")
        if nbytes > len(self.memory[ptr]):
            raise RuntimeError(f"access of {nbytes} bytes past an allocation of {len(self.memory[ptr])}")
        return memoryview(self.memory[ptr])[:nbytes]


# ---- the tensorrt module ------------------------------------------------------------------

class EnumValue:
    """A value of a pybind enum: compares by identity, converts to int, has .name."""

    __slots__ = ("name", "value")

    def __init__(self, name: str, value: int):
        self.name, self.value = name, value

    def __int__(self):
        return self.value

    __index__ = __int__

    def __repr__(self):
        return f"<{type(self).__name__}.{self.name}: {self.value}>"

    def __hash__(self):
        return hash((type(self).__name__, self.name))


def _make_enum(name: str, values: list[str]) -> type:
    cls = type(name, (EnumValue,), {"__slots__": ()})
    members = {}
    for i, value in enumerate(values):
        members[value] = cls(value, i)
        setattr(cls, value, members[value])
    cls.__members__ = members
    return cls


class _Member:
    """A name the release defines that the stand-in gives no behaviour: reading it gives a
    recording no-op callable (or what was written to it), writing it records the value."""

    def __init__(self, cls: str, name: str):
        self.cls, self.name = cls, name

    def __get__(self, obj, owner=None):
        if obj is None:
            return self
        if self.name in obj._values:
            return obj._values[self.name]

        def call(*args, **kwargs):
            obj._ctx.calls.add(f"{self.cls}.{self.name}", *args, **kwargs)
            _bind(obj._ctx, f"{self.cls}.{self.name}", args, kwargs)
        return call

    def __set__(self, obj, value):
        obj._ctx.calls.add(f"{self.cls}.{self.name}=", value)
        _check_write(obj._ctx, f"{self.cls}.{self.name}", value)
        obj._values[self.name] = value


class _Base:
    """Instances accept writes only to the names their release defines (pybind objects have no
    __dict__); Python subclasses (calibrators) may add their own attributes."""

    _cls = "?"
    _names: frozenset = frozenset()
    _ctx = None

    def __setattr__(self, name, value):
        if name.startswith("_") or type(self).__dict__.get("_generated") is None:
            object.__setattr__(self, name, value)
            return
        if name not in self._names:
            raise AttributeError(f"'tensorrt.{self._cls}' object has no attribute '{name}'")
        object.__setattr__(self, name, value)


# ---- pybind11's argument rules, from each release's `signatures` ---------------------------

def _accepts(kind: str, value, ctx: "_Context", cpp_type: str = "") -> bool:
    """Whether pybind11 would convert `value` for a parameter of `kind` (the surface's
    vocabulary): no implicit int -> enum, no str or float -> int, a pointer parameter takes
    None (nullptr)."""
    if value is None:
        return "*" in cpp_type or kind in ("any", "pointer(int)")
    if kind == "any":
        return True
    if kind in ("int", "pointer(int)"):
        return isinstance(value, (int, np.integer)) and not isinstance(value, EnumValue)
    if kind == "float":
        return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, EnumValue)
    if kind == "bool":
        return isinstance(value, (bool, np.bool_))
    if kind == "str":
        return isinstance(value, str)
    if kind == "Dims":
        return isinstance(value, (tuple, list)) and all(
            isinstance(d, (int, np.integer)) and not isinstance(d, bool) for d in value)
    if kind == "bytes/buffer":
        try:
            memoryview(value)
        except TypeError:
            return hasattr(value, "__bytes__") and isinstance(value, _Base)  # IHostMemory
        return True
    if kind == "list":
        return isinstance(value, (list, tuple))
    if kind == "callable":
        return callable(value)
    if kind.startswith("enum:"):
        found = getattr(ctx.module, kind[5:], None)
        if found is None and kind[5:] == "Severity":
            found = ctx.module.Logger.Severity
        return found is not None and isinstance(value, found)
    if kind.startswith("class:"):
        wanted = kind[6:]
        found = getattr(ctx.module, wanted, None)
        if found is None or isinstance(value, found):
            return True
        # the bindings' class hierarchy, which the surface does not list
        is_a = _SUBCLASSES.get(wanted, lambda n: False)
        return any(is_a(getattr(c, "_cls", "")) for c in type(value).__mro__)
    return True


_SUBCLASSES = {"IInt8Calibrator": lambda n: "Calibrator" in n, "ILayer": lambda n: n.endswith("Layer"),
               "ILogger": lambda n: n == "Logger"}


def _bind(ctx: "_Context", what: str, args: tuple, kwargs: dict) -> None:
    """Raise TypeError as pybind11 does when no overload of `what` takes these arguments: a
    keyword the binding does not name, a missing argument without a default, a value of the
    wrong type."""
    sig = ctx.signatures.get(what)
    if sig is None or sig.get("property") or sig.get("unresolved") or sig.get("arity_mismatch"):
        return
    problems = []
    for overload in [sig, *sig.get("overloads", [])]:
        params = overload.get("params", [])
        named = {p["name"]: i for i, p in enumerate(params) if p.get("name")}
        if len(args) > len(params):
            problems.append(f"takes {len(params)} arguments, {len(args)} given")
            continue
        bound = dict(enumerate(args))
        unknown = [k for k in kwargs if k not in named]
        if unknown:
            problems.append(f"unexpected keyword {unknown[0]!r}")
            continue
        bound.update({named[k]: v for k, v in kwargs.items()})
        missing = [p.get("name") or f"arg{i}" for i, p in enumerate(params)
                   if i not in bound and "default" not in p]
        wrong = [f"{p.get('name') or f'arg{i}'}: {p['type']} got {type(bound[i]).__name__}"
                 for i, p in enumerate(params) if i in bound
                 and not _accepts(p["type"], bound[i], ctx, p.get("cpp_type", ""))]
        if not missing and not wrong:
            return
        problems.append(f"missing {missing[0]}" if missing else wrong[0])
    raise TypeError(f"{what}(): incompatible function arguments ({'; '.join(problems)}); "
                    f"see {sig.get('source')}")


def _check_write(ctx: "_Context", what: str, value) -> None:
    """A property write as pybind11 takes it: not to a read-only property, and only a value
    its setter's type converts."""
    sig = ctx.signatures.get(what)
    if sig is None or not sig.get("property"):
        return
    if sig.get("readonly"):
        raise AttributeError(f"{what} is read-only ({sig.get('source')})")
    if not _accepts(sig["type"], value, ctx, sig.get("cpp_type", "")):
        raise TypeError(f"{what}: incompatible value {value!r} for {sig['type']} "
                        f"({sig.get('source')})")


def _recorded(cls: str, name: str, fn):
    def method(self, *args, **kwargs):
        self._ctx.calls.add(f"{cls}.{name}", *args, **kwargs)
        _bind(self._ctx, f"{cls}.{name}", args, kwargs)
        params = self._ctx.signatures.get(f"{cls}.{name}", {}).get("params") or []
        # the behaviour below takes NVIDIA's parameter order; keywords arrive as positions
        order = {p["name"]: i for i, p in enumerate(params) if p.get("name")}
        if kwargs and all(k in order for k in kwargs):
            merged = {**dict(enumerate(args)), **{order[k]: v for k, v in kwargs.items()}}
            return fn(self, *(merged[i] for i in sorted(merged)))
        return fn(self, *args, **kwargs)
    method.__name__ = name
    return method


def _recorded_property(cls: str, name: str, prop: property) -> property:
    def setter(self, value):
        self._ctx.calls.add(f"{cls}.{name}=", value)
        if prop.fset is None:
            raise AttributeError(f"'tensorrt.{cls}' property '{name}' is read-only")
        _check_write(self._ctx, f"{cls}.{name}", value)
        prop.fset(self, value)
    return property(prop.fget, setter)


class _Context:
    def __init__(self, version: str, device: Device, calls: Calls):
        self.version, self.device, self.calls = version, device, calls
        self.signatures = surface(version).get("signatures", {})
        self.major = int(version.split(".")[0])
        self.module: types.ModuleType | None = None

    def new(self, cls_name: str, **private):
        cls = getattr(self.module, cls_name)  # AttributeError where this release lacks the class
        obj = cls.__new__(cls)
        object.__setattr__(obj, "_values", {})
        for key, value in private.items():
            object.__setattr__(obj, key, value)
        return obj

    def enum(self, enum_name: str, value: str):
        return getattr(getattr(self.module, enum_name), value)

    def check_enum(self, value, enum_name: str) -> None:
        if not isinstance(value, getattr(self.module, enum_name)):
            raise TypeError(f"incompatible function arguments: expected tensorrt.{enum_name}, "
                            f"got {value!r}")


def _dims(shape) -> tuple[int, ...]:
    return tuple(int(d) for d in shape)


def _bit(ctx: _Context, enum_name: str, value: str) -> int:
    flag = getattr(getattr(ctx.module, enum_name), value, None)
    return 0 if flag is None else 1 << int(flag)


# Behaviour of the classes the project touches; a method or property is attached only where the
# release's surface lists its name.

class _Logger:
    def __init__(self, min_severity=None):
        self._values["min_severity"] = min_severity


class _Builder:
    def __init__(self, logger):
        self._logger = logger

    def create_network(self, flags=0):
        return self._ctx.new("INetworkDefinition", _flags=int(flags), _inputs=[], _outputs=[],
                             _layers=[], _qdq=False)

    def create_builder_config(self):
        ctx = self._ctx
        hcl = getattr(ctx.module, "HardwareCompatibilityLevel", None)
        return ctx.new("IBuilderConfig", _flags={"TF32"}, _profiles=[], _calibrator=None,
                       _calibration_profile=None, _timing=None, _pools={},
                       _device_type=ctx.enum("DeviceType", "GPU"), _dla_core=-1,
                       _hcl=hcl.NONE if hcl else None)

    def create_optimization_profile(self):
        return self._ctx.new("IOptimizationProfile", _shapes={})

    num_DLA_cores = property(lambda self: self._ctx.device.dla_cores)
    platform_has_fast_fp16 = property(lambda self: True)

    def build_serialized_network(self, network, config):
        return _build(self._ctx, network, config)


class _INetworkDefinition:
    def get_input(self, index):
        return self._inputs[index]

    def get_output(self, index):
        return self._outputs[index]

    num_inputs = property(lambda self: len(self._inputs))
    num_outputs = property(lambda self: len(self._outputs))
    num_layers = property(lambda self: len(self._layers))

    def get_layer(self, index):
        return self._layers[index]

    def mark_output(self, tensor):
        if tensor not in self._outputs:
            self._outputs.append(tensor)


class _ILayer:
    name = property(lambda self: self._name)
    num_outputs = property(lambda self: len(self._layer_outputs))

    def get_output(self, index):
        return self._layer_outputs[index]


class _ITensor:
    name = property(lambda self: self._name)
    shape = property(lambda self: self._shape)
    dtype = property(lambda self: self._dtype)


class _OnnxParser:
    def __init__(self, network, logger):
        self._network, self._errors = network, []

    def parse_from_file(self, path):
        ctx, network = self._ctx, self._network
        if ctx.major < 10 and not network._flags & _bit(ctx, "NetworkDefinitionCreationFlag",
                                                         "EXPLICIT_BATCH"):
            self._errors.append("the ONNX parser needs a network created with EXPLICIT_BATCH")
            return False
        try:
            graph = describe_onnx(str(path))
        except Exception as exc:  # the real parser reports unreadable files as parse errors
            self._errors.append(f"cannot read {path}: {exc}")
            return False
        dtypes = {1: "FLOAT", 10: "HALF"}

        def tensor(name, shape, elem_type):
            return ctx.new("ITensor", _name=name, _shape=tuple(shape),
                           _dtype=ctx.enum("DataType", dtypes.get(elem_type, "FLOAT")))
        network._inputs = [tensor(*i) for i in graph["inputs"]]
        network._outputs = [tensor(*o) for o in graph["outputs"]]
        known = {v[0]: v for v in graph["value_info"]}
        for name, op_type, node_outputs in graph["nodes"]:  # one layer per node, typed where the file says
            outputs = [tensor(*known[o]) if o in known else
                       ctx.new("ITensor", _name=o, _shape=(), _dtype=ctx.enum("DataType", "FLOAT"))
                       for o in node_outputs]
            network._layers.append(ctx.new("ILayer", _name=name, _layer_outputs=outputs))
        network._qdq = any(op_type == "QuantizeLinear" for _, op_type, _ in graph["nodes"])
        network._source = str(path)
        return True

    num_errors = property(lambda self: len(self._errors))

    def get_error(self, index):
        return self._ctx.new("ParserError", _desc=self._errors[index])


class _ParserError:
    def desc(self):
        return self._desc

    def __str__(self):
        return self._desc


class _IOptimizationProfile:
    def set_shape(self, input, min, opt, max):  # noqa: A002 (TensorRT's own argument names)
        self._shapes[input] = (_dims(min), _dims(opt), _dims(max))

    def get_shape(self, name):
        return list(self._shapes.get(name, ()))


def _profile_valid(profile) -> bool:
    return all(len(lo) == len(mid) == len(hi) and all(a <= b <= c for a, b, c in zip(lo, mid, hi))
               for lo, mid, hi in profile._shapes.values()) and bool(profile._shapes)


class _IBuilderConfig:
    def set_memory_pool_limit(self, pool, pool_size):
        self._ctx.check_enum(pool, "MemoryPoolType")
        self._pools[pool.name] = int(pool_size)

    def add_optimization_profile(self, profile):
        if not _profile_valid(profile):
            return -1
        self._profiles.append(profile)
        return len(self._profiles) - 1

    def create_timing_cache(self, serialized_timing_cache):
        data = bytes(serialized_timing_cache)
        ctx = self._ctx
        made_by = None
        if data.startswith(TIMING_MAGIC):
            made_by = json.loads(data[len(TIMING_MAGIC):])
        elif data:
            made_by = {"tensorrt": "unknown", "capability": "unknown"}
        return ctx.new("ITimingCache", _made_by=made_by)

    def set_timing_cache(self, cache, ignore_mismatch):
        ctx = self._ctx
        made_by = cache._made_by
        if made_by is not None and made_by != {"tensorrt": ctx.version,
                                               "capability": ctx.device.capability}:
            if not ignore_mismatch:
                return False
        self._timing = cache
        return True

    def get_timing_cache(self):
        return self._timing

    def set_flag(self, flag):
        self._ctx.check_enum(flag, "BuilderFlag")
        self._flags.add(flag.name)

    def clear_flag(self, flag):
        self._ctx.check_enum(flag, "BuilderFlag")
        self._flags.discard(flag.name)

    def get_flag(self, flag):
        self._ctx.check_enum(flag, "BuilderFlag")
        return flag.name in self._flags

    flags = property(lambda self: sum(1 << int(getattr(self._ctx.module.BuilderFlag, f))
                                      for f in self._flags))

    def _set_calibrator(self, calibrator):
        self._calibrator = calibrator
    int8_calibrator = property(lambda self: self._calibrator, _set_calibrator)

    def set_calibration_profile(self, profile):
        self._calibration_profile = profile

    def _set_device_type(self, value):
        self._ctx.check_enum(value, "DeviceType")
        self._device_type = value
    default_device_type = property(lambda self: self._device_type, _set_device_type)

    def _set_dla_core(self, value):
        self._dla_core = int(value)
    DLA_core = property(lambda self: self._dla_core, _set_dla_core)

    def _set_hcl(self, value):
        self._ctx.check_enum(value, "HardwareCompatibilityLevel")
        self._hcl = value
    hardware_compatibility_level = property(lambda self: self._hcl, _set_hcl)


class _IHostMemory:
    def __bytes__(self):
        return bytes(self._data)

    nbytes = property(lambda self: len(self._data))


class _ITimingCache:
    def serialize(self):
        ctx = self._ctx
        made_by = {"tensorrt": ctx.version, "capability": ctx.device.capability}
        return ctx.new("IHostMemory", _data=TIMING_MAGIC + json.dumps(made_by).encode())


PRECISION_FLAGS = {"FP16", "INT8", "BF16", "FP8", "INT4", "FP4"}


def _build(ctx: _Context, network, config):
    """Validate what NVIDIA documents about this build; None (as TensorRT returns) on failure."""
    def fail(message):
        ctx.calls.add("build error", message)
        return None

    strongly = ctx.major >= 11 or bool(network._flags & _bit(ctx, "NetworkDefinitionCreationFlag",
                                                             "STRONGLY_TYPED"))
    precision = config._flags & PRECISION_FLAGS
    if strongly and precision:
        return fail(f"strongly typed networks take no precision flags ({sorted(precision)})")
    if network._qdq and not strongly and "INT8" not in config._flags:
        return fail("a network with Q/DQ layers needs the INT8 flag unless it is strongly typed")
    if not network._inputs:
        return fail("empty network")
    inp, out = network._inputs[0], network._outputs[0]
    if not config._profiles and -1 in inp.shape:
        return fail("a dynamic input needs an optimization profile")
    profile = config._profiles[0]._shapes.get(inp.name) if config._profiles else (inp.shape,) * 3
    if profile is None:
        return fail(f"the optimization profile has no shape for input {inp.name}")
    if any(len(s) != len(inp.shape) or any(d != -1 and d != v for d, v in zip(inp.shape, s))
           for s in profile):
        return fail(f"profile shapes {profile} do not fit input {inp.name} {inp.shape}")
    calibration = None
    if config._calibrator is not None:
        calibrator = config._calibrator
        if strongly:
            return fail("strongly typed networks take no INT8 calibrator")
        if "INT8" not in config._flags:
            return fail("a calibrator is set but the INT8 flag is not")
        if not calibrator.__dict__.get("_initialized", getattr(calibrator, "_initialized", False)):
            raise TypeError(f"{type(calibrator).__name__}.__init__() must call the base "
                            "class __init__")
        if -1 in inp.shape and config._calibration_profile is None:
            return fail("dynamic shapes need a calibration profile")
        cache = calibrator.read_calibration_cache()
        header = bytes(cache).split(b"\n", 1)[0].decode() if cache else ""
        wanted = f"TRT-{version_code(ctx.version)}-"
        if cache and header.startswith(wanted):
            calibration = {"source": "cache", "header": header}
        else:
            ctx.calls.add("calibration cache ignored", header)
            if calibrator.get_batch([inp.name]) is None:
                return fail(f"calibration failure: cache header {header!r} is not {wanted}..., "
                            "and the calibrator gave no batches")
            calibration = {"source": "batches", "header": header}
    dla_core = None
    if config._device_type is ctx.enum("DeviceType", "DLA"):
        if not precision & {"FP16", "INT8"}:
            return fail("DLA runs fp16 or int8 only")
        if not 0 <= config._dla_core < ctx.device.dla_cores:
            return fail(f"DLA core {config._dla_core} does not exist "
                        f"({ctx.device.dla_cores} cores)")
        if not profile[0] == profile[1] == profile[2]:
            return fail(f"DLA needs static shapes; profile is {profile}")
        dla_core = config._dla_core
    hcl = config._hcl
    ampere_plus = hcl is not None and hcl.name != "NONE"
    if ampere_plus and tuple(int(p) for p in ctx.device.capability.split(".")) < (8, 0):
        return fail(f"hardware compatibility needs compute capability >= 8.0, "
                    f"this GPU is {ctx.device.capability}")
    engine = {"tensorrt": ctx.version, "capability": ctx.device.capability,
              "input": {"name": inp.name, "shape": list(inp.shape)},
              "output": {"name": out.name, "classes": out.shape[-1]},
              "marked": [{"name": t.name, "shape": list(t.shape)} for t in network._outputs[1:]],
              "profile": [list(s) for s in profile], "dla_core": dla_core,
              "flags": sorted(config._flags), "strongly_typed": strongly,
              "version_compatible": "VERSION_COMPATIBLE" in config._flags,
              "hardware_compatible": ampere_plus, "calibration": calibration,
              "answers": _answers(getattr(network, "_source", None)) if ANSWERS else {}}
    return ctx.new("IHostMemory", _data=ENGINE_MAGIC + json.dumps(engine).encode())


def _row_key(row: np.ndarray) -> str:
    import hashlib
    return hashlib.sha1(np.ascontiguousarray(row, dtype=np.float32).tobytes()).hexdigest()


def _answers(source: str | None) -> dict:
    """With ANSWERS on, an engine built from a bundle's ONNX file answers the bundle's golden
    inputs with what ONNX Runtime computes from that file (in the test run's Python), so a
    device flow whose verify must pass can run on the stand-in; any other input still gets
    standin_logits."""
    golden = Path(source).parent / "golden" / "inputs.npy" if source else None
    if golden is None or not golden.is_file():
        return {}
    import subprocess
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    run = subprocess.run([DESCRIBER or sys.executable, __file__, "--answers", source, str(golden)],
                         capture_output=True, text=True, check=True, env=env)
    return json.loads(run.stdout)


def answers_for(model: str, inputs: str) -> dict:
    import onnxruntime
    options = onnxruntime.SessionOptions()
    options.add_session_config_entry("session.disable_quant_qdq", "1")  # Q/DQ as TensorRT reads it
    session = onnxruntime.InferenceSession(model, options, providers=["CPUExecutionProvider"])
    x = np.load(inputs)
    name = session.get_inputs()[0].name
    return {_row_key(row): session.run(None, {name: row[None]})[0][0].tolist() for row in x}


class _Runtime:
    def __init__(self, logger):
        self._logger = logger

    def _set_dla_core(self, value):
        self._values["DLA_core"] = int(value)
    DLA_core = property(lambda self: self._values.get("DLA_core", 0), _set_dla_core)

    def _set_host_code(self, value):
        self._values["engine_host_code_allowed"] = bool(value)
    engine_host_code_allowed = property(lambda self: self._values.get("engine_host_code_allowed",
                                                                      False), _set_host_code)

    def deserialize_cuda_engine(self, serialized_engine):
        ctx = self._ctx
        blob = bytes(serialized_engine)
        if not blob.startswith(ENGINE_MAGIC):
            ctx.calls.add("deserialize error", "not an engine")
            return None
        meta = json.loads(blob[len(ENGINE_MAGIC):])
        if meta["tensorrt"] != ctx.version and not meta["version_compatible"]:
            ctx.calls.add("deserialize error", "built with another TensorRT; please rebuild")
            return None
        if meta["version_compatible"] and not self._values.get("engine_host_code_allowed"):
            ctx.calls.add("deserialize error", "version-compatible engine: host code not allowed")
            return None
        if meta["capability"] != ctx.device.capability and not meta["hardware_compatible"]:
            ctx.calls.add("deserialize error", "built for another GPU")
            return None
        if meta["dla_core"] is not None and self._values.get("DLA_core", -1) != meta["dla_core"]:
            ctx.calls.add("deserialize warning", "runtime DLA core differs from the engine's")
        return ctx.new("ICudaEngine", _meta=meta)


def _io_names(meta) -> list[str]:
    return [meta["input"]["name"], meta["output"]["name"], *(m["name"] for m in meta["marked"])]


class _ICudaEngine:
    num_io_tensors = property(lambda self: len(_io_names(self._meta)))
    num_optimization_profiles = property(lambda self: 1)

    def get_tensor_name(self, index):
        return _io_names(self._meta)[index]

    def get_tensor_mode(self, name):
        mode = "INPUT" if name == self._meta["input"]["name"] else "OUTPUT"
        return self._ctx.enum("TensorIOMode", mode)

    def get_tensor_dtype(self, name):
        return self._ctx.enum("DataType", "FLOAT")

    def get_tensor_shape(self, name):
        if name == self._meta["input"]["name"]:
            return tuple(self._meta["input"]["shape"])
        marked = {m["name"]: m["shape"] for m in self._meta["marked"]}
        if name in marked:
            return tuple(marked[name])
        return (-1, self._meta["output"]["classes"])

    def get_tensor_profile_shape(self, name, profile_index):
        return [tuple(s) for s in self._meta["profile"]]

    def create_execution_context(self):
        return self._ctx.new("IExecutionContext", _engine=self, _shapes={}, _addresses={})


def standin_logits(batch: np.ndarray, classes: int) -> np.ndarray:
    """What every stand-in engine computes: per image, its mean pixel plus the class index."""
    return (batch.reshape(len(batch), -1).mean(axis=1, dtype=np.float64)[:, None]
            + np.arange(classes)).astype(np.float32)


class _IExecutionContext:
    def set_input_shape(self, name, shape):
        meta = self._engine._meta
        shape = _dims(shape)
        lo, _, hi = meta["profile"]
        if name != meta["input"]["name"] or len(shape) != len(lo) or not all(
                a <= s <= b for a, s, b in zip(lo, shape, hi)):
            self._ctx.calls.add("execution error", f"shape {shape} is outside the profile {lo}..{hi}")
            return False
        self._shapes[name] = shape
        return True

    def get_tensor_shape(self, name):
        meta = self._engine._meta
        inp = self._shapes.get(meta["input"]["name"])
        if name == meta["input"]["name"]:
            return inp or tuple(meta["input"]["shape"])
        marked = {m["name"]: m["shape"] for m in meta["marked"]}
        if name in marked:
            return tuple(d if d != -1 else (inp[0] if inp else -1) for d in marked[name])
        return ((inp[0] if inp else -1), meta["output"]["classes"])

    def set_tensor_address(self, name, memory):
        self._addresses[name] = int(memory)
        return True

    def execute_async_v3(self, stream_handle):
        ctx, meta = self._ctx, self._engine._meta
        if isinstance(stream_handle, bool) or not hasattr(stream_handle, "__int__"):
            raise TypeError("execute_async_v3(): incompatible function arguments: stream_handle "
                            f"must be an int, got {type(stream_handle).__name__}")
        stream_handle = int(stream_handle)  # as pybind converts; cuda-bindings 13 warns here
        if stream_handle not in ctx.device.streams:
            raise RuntimeError(f"0x{stream_handle:x} is not a live CUDA stream")
        name_in = meta["input"]["name"]
        shape = self._shapes.get(name_in)
        if shape is None or any(n not in self._addresses for n in _io_names(meta)):
            ctx.calls.add("execution error", "input shape or tensor addresses not set")
            return False
        if stream_handle in ctx.device.capturing:  # recorded with today's shape and addresses
            addresses = dict(self._addresses)
            ctx.device.capturing[stream_handle].append(lambda: self._compute(shape, addresses))
            return True
        self._compute(shape, self._addresses)
        return True

    def _compute(self, shape, addresses):
        ctx, meta = self._ctx, self._engine._meta
        name_in, name_out = meta["input"]["name"], meta["output"]["name"]
        count = int(np.prod(shape))
        x = np.frombuffer(ctx.device.buffer(addresses[name_in], count * 4),
                          dtype=np.float32).reshape(shape)
        y = standin_logits(x, meta["output"]["classes"])
        for index, row in enumerate(x):
            known = meta.get("answers", {}).get(_row_key(row))
            if known is not None:
                y[index] = known
        ctx.device.buffer(addresses[name_out], y.nbytes)[:] = y.tobytes()
        for index, marked in enumerate(meta["marked"]):  # each marked tensor: a fixed pattern
            out_shape = self.get_tensor_shape(marked["name"])
            values = np.broadcast_to(standin_logits(x, 1).reshape(-1, *[1] * (len(out_shape) - 1))
                                     + index, out_shape).astype(np.float32)
            ctx.device.buffer(addresses[marked["name"]], values.nbytes)[:] = values.tobytes()


class _Calibrator:
    def __init__(self):
        object.__setattr__(self, "_values", {})
        object.__setattr__(self, "_initialized", True)


BEHAVIOUR = {"Logger": _Logger, "Builder": _Builder, "INetworkDefinition": _INetworkDefinition,
             "ITensor": _ITensor, "ILayer": _ILayer, "OnnxParser": _OnnxParser, "ParserError": _ParserError,
             "IOptimizationProfile": _IOptimizationProfile, "IBuilderConfig": _IBuilderConfig,
             "IHostMemory": _IHostMemory, "ITimingCache": _ITimingCache, "Runtime": _Runtime,
             "ICudaEngine": _ICudaEngine, "IExecutionContext": _IExecutionContext}


def _is_enum(names: list[str]) -> bool:
    meaningful = [n for n in names if n not in _ENUM_LEFTOVERS]
    return bool(meaningful) and all(_UPPER.fullmatch(n) for n in meaningful)


def _make_class(ctx: _Context, name: str, names: list[str]) -> type:
    impl = BEHAVIOUR.get(name)
    if "Calibrator" in name:
        impl = _Calibrator
    attrs = {"_cls": name, "_names": frozenset(names), "_ctx": ctx, "_generated": True}
    for member in names:
        found = impl.__dict__.get(member) if impl else None
        if isinstance(found, property):
            attrs[member] = _recorded_property(name, member, found)
        elif callable(found):
            attrs[member] = _recorded(name, member, found)
        elif member not in ("__del__",):
            attrs[member] = _Member(name, member)
    if impl is not None:
        for key, value in impl.__dict__.items():
            if key.startswith("_") and key not in ("__dict__", "__weakref__", "__module__",
                                                   "__doc__", "__init__") and key not in attrs:
                attrs[key] = value
    init = impl.__dict__.get("__init__") if impl else None

    def __init__(self, *args, **kwargs):
        object.__setattr__(self, "_values", {})
        ctx.calls.add(f"{name}()", *args, **kwargs)
        if impl is not _Calibrator:
            _bind(ctx, f"{name}.__init__", args, kwargs)
        if init is not None:
            init(self, *args, **kwargs)
    attrs["__init__"] = __init__
    return type(name, (_Base,), attrs)


def make_tensorrt(version: str, device: Device | None = None, calls: Calls | None = None):
    """The `tensorrt` module of one release, as its bindings' surface defines it."""
    snapshot = surface(version)["python"]
    ctx = _Context(version, device or Device(), calls if calls is not None else Calls())
    module = types.ModuleType("tensorrt", f"stand-in for TensorRT {version} (names only)")
    module.__spec__ = importlib.machinery.ModuleSpec("tensorrt", None)
    ctx.module = module
    module.__version__ = version
    module._standin = ctx
    for name, names in snapshot.items():
        if _is_enum(names):
            setattr(module, name, _make_enum(name, [n for n in names if _UPPER.fullmatch(n)]))
    for name, names in snapshot.items():
        if not _is_enum(names):
            setattr(module, name, _make_class(ctx, name, names))
    # What tensorrt/__init__.py adds in Python (NVIDIA/TensorRT python/packaging/bindings_wheel):
    # Logger gets the severities, DataType gets module-level aliases, nptype() maps to numpy.
    severity = module.Severity
    del module.Severity  # an enum nested in ILogger, not a module attribute
    module.Logger.Severity = severity
    for value, member in severity.__members__.items():
        setattr(module.Logger, value, member)
    aliases = {"float32": "FLOAT", "float16": "HALF", "int8": "INT8", "int32": "INT32",
               "int64": "INT64", "bool": "BOOL", "uint8": "UINT8", "bfloat16": "BF16",
               "fp8": "FP8", "int4": "INT4"}
    numpy_of = {"FLOAT": np.float32, "HALF": np.float16, "INT8": np.int8, "INT32": np.int32,
                "INT64": np.int64, "BOOL": np.bool_, "UINT8": np.uint8}
    for alias, value in aliases.items():
        if hasattr(module.DataType, value):
            setattr(module, alias, getattr(module.DataType, value))

    def nptype(trt_type):
        if isinstance(trt_type, module.DataType) and trt_type.name in numpy_of:
            return numpy_of[trt_type.name]
        raise TypeError("Could not resolve TensorRT datatype to an equivalent numpy datatype.")
    module.nptype = nptype
    module.volume = lambda iterable: int(np.prod(list(iterable), dtype=np.int64))
    return module


# ---- cuda-python --------------------------------------------------------------------------

class cudaError_t(enum.IntEnum):
    cudaSuccess = 0
    cudaErrorInvalidValue = 1
    cudaErrorMemoryAllocation = 2
    cudaErrorNoDevice = 100
    cudaErrorInvalidResourceHandle = 400
    cudaErrorStreamCaptureUnsupported = 900


class cudaMemcpyKind(enum.IntEnum):
    cudaMemcpyHostToHost = 0
    cudaMemcpyHostToDevice = 1
    cudaMemcpyDeviceToHost = 2
    cudaMemcpyDeviceToDevice = 3


CUDART_NAMES = ("cudaError_t", "cudaMemcpyKind", "cudaStream_t", "cudaGetDeviceProperties",
                "cudaGetDeviceCount", "cudaStreamCreate", "cudaStreamDestroy",
                "cudaStreamSynchronize", "cudaMalloc", "cudaFree", "cudaMemcpyAsync",
                "cudaGetErrorString", "cudaDriverGetVersion", "cudaRuntimeGetVersion",
                "cudaStreamCaptureMode", "cudaStreamBeginCapture", "cudaStreamEndCapture",
                "cudaGraphInstantiate", "cudaGraphLaunch", "cudaGraphExecDestroy", "cudaGraphDestroy")


class cudaStreamCaptureMode(enum.IntEnum):
    cudaStreamCaptureModeGlobal = 0
    cudaStreamCaptureModeThreadLocal = 1
    cudaStreamCaptureModeRelaxed = 2


def make_cudart(device: Device, calls: Calls, cuda_python: str = "12.6.1"):
    """cuda-python's runtime module, with the names and tuple-returning calls it defines
    (names checked against the real cuda.bindings.runtime where it is installed)."""
    module = types.ModuleType("cuda.bindings.runtime", "stand-in for cuda-python's runtime")
    major = int(cuda_python.split(".")[0])
    ok = (cudaError_t.cudaSuccess,)

    class cudaStream_t:
        def __init__(self, handle: int = 0):
            self._handle = handle

        def getPtr(self):
            return self._handle

        def __int__(self):
            if major >= 13:
                warnings.warn("int(cudaStream_t) is deprecated; use "
                              "cuda.bindings.utils.get_cuda_native_handle", DeprecationWarning,
                              stacklevel=2)
            return self._handle

    class cudaDeviceProp:
        def __init__(self):
            self.name = device.name.encode().ljust(256, b"\x00")
            self.major, self.minor = (int(p) for p in device.capability.split("."))

    def record(name, fn):
        def call(*args):
            calls.add(f"cudart.{name}", *args)
            return fn(*args)
        return call

    def get_properties(index):
        return (ok[0], cudaDeviceProp()) if index == 0 else (cudaError_t.cudaErrorInvalidValue, None)

    def stream_create():
        handle = device.alloc(0)
        device.streams.add(handle)
        return ok[0], cudaStream_t(handle)

    def stream_destroy(stream):
        device.streams.discard(stream.getPtr())
        return ok

    def memcpy(dst, src, count, kind, stream):
        if not isinstance(stream, cudaStream_t) or stream.getPtr() not in device.streams:
            return (cudaError_t.cudaErrorInvalidResourceHandle,)
        if kind == cudaMemcpyKind.cudaMemcpyHostToDevice:
            host = memoryview(np.ascontiguousarray(src)).cast("B")
            device.buffer(dst, count)[:] = host[:count]
        elif kind == cudaMemcpyKind.cudaMemcpyDeviceToHost:
            if not (isinstance(dst, np.ndarray) and dst.flags.c_contiguous and dst.flags.writeable):
                return (cudaError_t.cudaErrorInvalidValue,)
            memoryview(dst).cast("B")[:count] = device.buffer(src, count)
        else:
            return (cudaError_t.cudaErrorInvalidValue,)
        return ok

    class cudaGraph_t:
        def __init__(self, work):
            self.work = work

    class cudaGraphExec_t:
        def __init__(self, graph):
            self.work = list(graph.work)

    def live(stream):
        return isinstance(stream, cudaStream_t) and stream.getPtr() in device.streams

    def begin_capture(stream, mode):
        if not live(stream) or not isinstance(mode, cudaStreamCaptureMode):
            return (cudaError_t.cudaErrorInvalidValue,)
        device.capturing[stream.getPtr()] = []
        return ok

    def end_capture(stream):
        if not live(stream) or stream.getPtr() not in device.capturing:
            return (cudaError_t.cudaErrorInvalidValue, None)
        return ok[0], cudaGraph_t(device.capturing.pop(stream.getPtr()))

    def instantiate(graph, flags):
        if not isinstance(graph, cudaGraph_t):
            return (cudaError_t.cudaErrorInvalidValue, None)
        return ok[0], cudaGraphExec_t(graph)

    def launch(graph_exec, stream):
        if not isinstance(graph_exec, cudaGraphExec_t) or not live(stream):
            return (cudaError_t.cudaErrorInvalidValue,)
        for work in graph_exec.work:
            work()
        return ok

    def free(ptr):
        return ok if device.memory.pop(ptr, None) is not None else (cudaError_t.cudaErrorInvalidValue,)

    functions = {
        "cudaGetDeviceProperties": get_properties,
        "cudaGetDeviceCount": lambda: (ok[0], 1),
        "cudaStreamCreate": stream_create,
        "cudaStreamDestroy": stream_destroy,
        # a stream left capturing refuses to synchronize (CUDA: cudaErrorStreamCaptureUnsupported)
        "cudaStreamSynchronize": lambda stream: ((cudaError_t.cudaErrorStreamCaptureUnsupported,)
                                                 if live(stream) and stream.getPtr() in device.capturing
                                                 else ok),
        "cudaMalloc": lambda nbytes: (ok[0], device.alloc(int(nbytes))),
        "cudaFree": free,
        "cudaMemcpyAsync": memcpy,
        "cudaGetErrorString": lambda err: (ok[0], cudaError_t(err).name.encode()),
        "cudaDriverGetVersion": lambda: (ok[0], device.driver),
        "cudaRuntimeGetVersion": lambda: (ok[0], major * 1000 + 60),
        "cudaStreamBeginCapture": begin_capture,
        "cudaStreamEndCapture": end_capture,
        "cudaGraphInstantiate": instantiate,
        "cudaGraphLaunch": launch,
        "cudaGraphExecDestroy": lambda graph_exec: ok,
        "cudaGraphDestroy": lambda graph: ok,
    }
    module.cudaStreamCaptureMode = cudaStreamCaptureMode
    module.cudaError_t, module.cudaMemcpyKind, module.cudaStream_t = cudaError_t, cudaMemcpyKind, cudaStream_t
    for name, fn in functions.items():
        setattr(module, name, record(name, fn))
    return module


class StandIn:
    """One device with a TensorRT release and a cuda-python version, installed into sys.modules."""

    def __init__(self, version: str, *, device: Device | None = None,
                 cuda_python: str | None = "12.6.1"):
        self.version = version
        self.device = device or Device()
        self.calls = Calls()
        self.trt = make_tensorrt(version, self.device, self.calls)
        self.cudart = make_cudart(self.device, self.calls, cuda_python) if cuda_python else None
        self.modules = _cuda_modules(self.cudart, cuda_python)
        self.modules["tensorrt"] = self.trt

    def install(self, monkeypatch) -> "StandIn":
        for name in [m for m in sys.modules if m == "cuda" or m.startswith("cuda.")]:
            monkeypatch.delitem(sys.modules, name)
        for name, module in self.modules.items():
            monkeypatch.setitem(sys.modules, name, module)
        return self

    def flag_names(self, enum_name: str, bits: int) -> set[str]:
        members = getattr(self.trt, enum_name).__members__
        return {name for name, value in members.items() if bits & (1 << int(value))}


def _cuda_modules(cudart, cuda_python: str | None) -> dict[str, types.ModuleType | None]:
    """The package layout of that cuda-python version: `cuda.bindings.runtime` (12.6.1+, with
    `cuda.bindings.utils.get_cuda_native_handle` from 12.9), or `cuda.cudart` before that; with
    None, no cuda-python at all (None in sys.modules makes the import fail)."""
    if cuda_python is None:
        return {"cuda": None, "cuda.bindings": None, "cuda.bindings.runtime": None,
                "cuda.cudart": None}
    parts = tuple(int(p) for p in cuda_python.split(".")[:3])
    cuda = types.ModuleType("cuda")
    cuda.__path__ = []
    cuda.__spec__ = importlib.machinery.ModuleSpec("cuda", None, is_package=True)
    modules = {"cuda": cuda}
    if parts >= (12, 6, 1):
        bindings = types.ModuleType("cuda.bindings")
        bindings.__path__ = []
        bindings.__version__ = cuda_python
        bindings.runtime = cudart
        cuda.bindings = bindings
        modules.update({"cuda.bindings": bindings, "cuda.bindings.runtime": cudart})
        if parts >= (12, 9, 0):
            utils = types.ModuleType("cuda.bindings.utils")
            utils.get_cuda_native_handle = lambda obj: obj.getPtr()
            bindings.utils = utils
            modules["cuda.bindings.utils"] = utils
    else:
        cuda.__version__ = cuda_python
        cudart.__name__ = "cuda.cudart"
        cuda.cudart = cudart
        modules["cuda.cudart"] = cudart
    return modules


# ---- for subprocesses (build_engine.sh, verify.py run as a device would) ---------------------

# The Python that ran the tests: it reads ONNX files for a stand-in running on a device's Python,
# which has no onnx package (TensorRT's parser is C++ and needs none)
DESCRIBER = None
ANSWERS = False  # see _answers


def describe_onnx(path: str) -> dict:
    """What the parser stand-in needs of an ONNX graph: inputs and outputs (name, shape,
    element type), typed intermediate tensors, and each node's name, op type and outputs."""
    try:
        import onnx
    except ImportError:
        if DESCRIBER is None:
            raise
        import subprocess
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # no stand-in there
        run = subprocess.run([DESCRIBER, __file__, path], capture_output=True, text=True,
                             check=True, env=env)
        return json.loads(run.stdout)
    graph = onnx.load(path, load_external_data=False).graph
    weights = {i.name for i in graph.initializer}

    def tensor(value_info):
        t = value_info.type.tensor_type
        return [value_info.name, [d.dim_value if d.HasField("dim_value") else -1 for d in t.shape.dim],
                t.elem_type]
    return {"inputs": [tensor(i) for i in graph.input if i.name not in weights],
            "outputs": [tensor(o) for o in graph.output],
            "value_info": [tensor(v) for v in graph.value_info],
            "nodes": [[n.name, n.op_type, list(n.output)] for n in graph.node]}


SITE_INIT = '''\
"""Stand-in written by tests/trt_standin.py for a subprocess; see that file."""
import json, os, sys
sys.path.insert(0, {tests!r})
import trt_standin
_config = json.load(open({config!r}))
trt_standin.DESCRIBER = _config["describer"]
trt_standin.ANSWERS = _config.get("answers", False)
_standin = trt_standin.StandIn(_config["tensorrt"], cuda_python=_config["cuda_python"],
                               device=trt_standin.Device(**_config["device"]))
sys.modules.update(_standin.modules)
'''


def write_site(directory: Path, version: str, *, cuda_python: str | None = "12.6.1",
               device: dict | None = None, answers: bool = False) -> Path:
    """A folder to put first on PYTHONPATH: `import tensorrt` (and cuda) there give stand-ins."""
    directory.mkdir(parents=True, exist_ok=True)
    config = directory / "standin.json"
    config.write_text(json.dumps({"tensorrt": version, "cuda_python": cuda_python,
                                  "device": device or {}, "describer": sys.executable,
                                  "answers": answers}))
    init = SITE_INIT.format(tests=str(Path(__file__).resolve().parent), config=str(config))
    (directory / "tensorrt").mkdir(exist_ok=True)
    (directory / "tensorrt" / "__init__.py").write_text(
        init + "globals().update({k: v for k, v in vars(_standin.trt).items() "
               "if not k.startswith('__') or k == '__version__'})\n")
    (directory / "sitecustomize.py").write_text(
        "import importlib\ntry:\n    importlib.import_module('tensorrt')\nexcept Exception:\n"
        "    pass\n")
    return directory


if __name__ == "__main__":  # the describer, for a stand-in on a device's Python
    if sys.argv[1] == "--answers":
        print(json.dumps(answers_for(sys.argv[2], sys.argv[3])))
    else:
        print(json.dumps(describe_onnx(sys.argv[1])))
