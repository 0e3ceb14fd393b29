"""Power while bench runs: tegrastats on a Jetson; on an x86 GPU, NVML's energy counter, or
nvidia-smi's board reading where the GPU has no counter.

On an x86 GPU a row's energy is the difference of NVML's total-energy counter
(nvmlDeviceGetTotalEnergyConsumption, millijoules since the driver loaded; Volta and newer, what
Zeus and CodeCarbon read) over a stretch of the row's own work at least MIN_ENERGY_S long and
spanning MIN_UPDATES changes of the counter: nvidia-smi's power.draw is a one-second average on
Ampere and newer (and the sensor samples a quarter of the time on A100/H100, arXiv 2312.02741),
so a row shorter than that would be read as a blend of its neighbours.

tegrastats prints a line per interval in which each power rail reads `NAME current/average`, in
milliwatts ("VDD_IN 4542mW/4000mW" from JetPack 5 on; "POM_5V_IN 4520/4680", no unit, before).
Only the current value is used: the average is tegrastats' own since it started, not over the
loop that was timed. Every number here is a reading taken during that loop; a loop too short
for enough readings gets a reason instead of a number.
"""

from __future__ import annotations

import math
import os
import re
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, replace
from typing import Callable

from ..errors import install_hint

INTERVAL_MS = 100
MIN_SAMPLES = 3
# what a reading can be: no board or module draws 5 kW (an H200 board 700 W, a Jetson under
# 100 W), and no tegrastats line lists 64 rails; a tool's line beyond either, or longer than
# MAX_LINE, is no reading (a hostile or broken tool must not end the bench)
MAX_MW = 5_000_000
MAX_RAILS = 64
MAX_LINE = 64 << 10
# a rail reading: a name, then current/average with or without the mW unit, and nothing glued on
# after (so "RAM 1282/62795MB" and "IRAM 0/252kB" are not rails); digits bounded, so 400 of them
# are not a number
_RAIL = re.compile(r"(?<![@\w])([A-Z][A-Z0-9_]*) (\d{1,9})(?:mW)?/(\d{1,9})(?:mW)?(?![\w/])")
# the rail that is the whole module's input, where the board has one: VDD_IN (Orin Nano and NX,
# Xavier NX, TX2), POM_5V_IN (Nano). AGX Orin and AGX Xavier report parts only, so no total
INPUT_RAILS = ("VDD_IN", "POM_5V_IN")
NOT_CONNECTED = "NC"  # AGX Orin's monitor lists unused channels as "NC 0mW/0mW"


class PowerUnavailable(RuntimeError):
    """No power source on this machine; the message says which were looked for."""


def parse_tegrastats(line: str) -> dict[str, int]:
    """{rail: current milliwatts} from one tegrastats line; {} when it has no power rails, or
    holds what no board reads (`plausible`)."""
    return plausible({name: int(current) for name, current, _average in _RAIL.findall(line)
                      if name != NOT_CONNECTED})


def plausible(rails: dict[str, int]) -> dict[str, int]:
    """`rails`, or {} (no reading) when a rail reads past MAX_MW or there are over MAX_RAILS."""
    if len(rails) > MAX_RAILS or not all(0 <= mw <= MAX_MW for mw in rails.values()):
        return {}
    return rails


def parse_nvidia_smi(line: str) -> dict[str, int]:
    """{"GPU board": milliwatts} from one line of `nvidia-smi --query-gpu=power.draw
    --format=csv,noheader,nounits` (watts, or "[N/A]" where the GPU has no reading)."""
    try:
        watts = float(line.strip())
    except ValueError:
        return {}
    # a reading that cannot be a draw (negative, infinite, 1e306 W) is no reading, never an
    # average of nothing
    if not (math.isfinite(watts) and 0 <= watts * 1000 <= MAX_MW):
        return {}
    return {"GPU board": round(watts * 1000)}


@dataclass(frozen=True)
class Source:
    name: str
    command: tuple[str, ...]
    parse: Callable[[str], dict[str, int]]
    total: str | None  # the rail that is the whole board or module, if one is
    says: str  # what the readings cover, for the report
    device: str = ""  # the GPU read (its UUID or PCI bus id), for the GPU sources


TEGRASTATS = Source("tegrastats", ("tegrastats", "--interval", str(INTERVAL_MS)), parse_tegrastats,
                    None, "the Jetson's power rails as tegrastats reads them")
NVIDIA_SMI = Source("nvidia-smi", ("nvidia-smi", "--query-gpu=power.draw", "--format=csv,noheader,nounits",
                                   "-lms", str(INTERVAL_MS)), parse_nvidia_smi, "GPU board",
                    "{device}'s whole-board draw as nvidia-smi reads it (not the CPU's, nor the "
                    "host's); the driver averages it over about 1 s on Ampere and newer, so a row "
                    "shorter than that blends with its neighbours")
NVML = Source("nvml", (), lambda line: {}, "GPU board",
              "{device}'s whole-board energy from NVML's total-energy counter (not the CPU's, nor "
              "the host's), its difference over each row")
MIN_ENERGY_S = 2.0
MIN_UPDATES = 10  # counter changes a stretch spans, so its resolution is a tenth of it or finer
READ_EVERY_S = 0.01


class SharedBoard(PowerUnavailable):
    """The CUDA device is one MIG instance of a board whose counters cover every instance."""


def cuda_device() -> dict | None:
    """The CUDA device this process runs on (torch's device 0: CUDA_VISIBLE_DEVICES applied,
    which NVML ignores, and in CUDA's order, which is not NVML's) as NVML can find it: its UUID
    and PCI bus id; None without a GPU."""
    import torch
    if not torch.cuda.is_available():
        return None
    props = torch.cuda.get_device_properties(0)
    uuid = str(getattr(props, "uuid", "") or "")
    bus = None
    if all(hasattr(props, name) for name in ("pci_domain_id", "pci_bus_id", "pci_device_id")):
        bus = f"{props.pci_domain_id:08X}:{props.pci_bus_id:02X}:{props.pci_device_id:02X}.0"
    mig = "MIG-" in os.environ.get("CUDA_VISIBLE_DEVICES", "")
    return {"uuid": uuid if not uuid or uuid.startswith(("GPU-", "MIG-")) else f"GPU-{uuid}",
            "pci_bus_id": bus, "mig": mig}


def _named(device: dict) -> str:
    return device.get("uuid") or device.get("pci_bus_id") or "GPU"


def _shared(device: dict) -> SharedBoard:
    return SharedBoard(f"the CUDA device ({_named(device)}) is a MIG instance: the board's power "
                       "counters cover every instance on it, so no GPU power reading is this "
                       "row's; power was not measured")


def nvml_handle(nvml, device: dict):
    """NVML's handle for the CUDA device `device` (cuda_device()): by UUID, else by PCI bus id,
    never by index (NVML's index 0 can be another board). SharedBoard where the device is a MIG
    instance or the board runs MIG instances."""
    handle = None
    for how, key in (("nvmlDeviceGetHandleByUUID", "uuid"), ("nvmlDeviceGetHandleByPciBusId", "pci_bus_id")):
        if device.get(key):
            try:
                handle = getattr(nvml, how)(device[key])
                break
            except nvml.NVMLError:
                continue
    if handle is None:
        raise PowerUnavailable(f"NVML finds no GPU with the CUDA device's UUID "
                               f"({device.get('uuid') or 'unknown'}) or PCI bus id "
                               f"({device.get('pci_bus_id') or 'unknown'})")
    if device.get("mig"):
        raise _shared(device)
    try:
        if nvml.nvmlDeviceIsMigDeviceHandle(handle):
            raise _shared(device)
        current, _pending = nvml.nvmlDeviceGetMigMode(handle)
    except nvml.NVMLError:  # NotSupported: a GPU without MIG
        return handle
    if current == nvml.NVML_DEVICE_MIG_ENABLE:
        raise _shared(device)
    return handle


def find_source(which: Callable[[str], str | None] = shutil.which,
                counter: Callable[[dict], "EnergyCounter"] | None = None, gpu: bool = True,
                device: dict | None = None) -> Source:
    """tegrastats where it exists (a Jetson: the module's rails, whatever runs); for rows on an
    x86 GPU (`gpu`), NVML's energy counter of the CUDA device (`device`, cuda_device() by
    default; Volta or newer, with nvidia-ml-py), else nvidia-smi on that device; else refused. A
    bench on the CPU takes no GPU source: the board's draw is not what its rows spend, and
    neither is a MIG instance's."""
    if which(TEGRASTATS.command[0]):
        return TEGRASTATS
    if not gpu:
        raise PowerUnavailable("no power source for rows on the CPU: tegrastats (a Jetson) is not "
                               "on PATH, and a GPU board's draw is not what CPU rows spend, so "
                               "power was not measured")
    device = device if device is not None else cuda_device()
    if device is None:
        raise PowerUnavailable("no power source here: not a Jetson, and no CUDA GPU is visible")
    if device.get("mig"):
        raise _shared(device)
    named = _named(device)
    try:
        (counter or EnergyCounter)(device).close()
        return replace(NVML, says=NVML.says.format(device=named), device=named)
    except SharedBoard:
        raise
    except PowerUnavailable:
        pass
    if which(NVIDIA_SMI.command[0]):
        return replace(NVIDIA_SMI, command=(*NVIDIA_SMI.command, "-i", named),
                       says=NVIDIA_SMI.says.format(device=named), device=named)
    raise PowerUnavailable("no power source here: neither tegrastats (a Jetson) nor NVML's energy "
                           "counter nor nvidia-smi (an NVIDIA GPU driver), so power was not measured")


class EnergyCounter:
    """NVML's total-energy counter of the CUDA device `device` (cuda_device()), in millijoules."""

    def __init__(self, device: dict):
        try:
            import pynvml
        except ImportError:
            raise PowerUnavailable(f"nvidia-ml-py is not installed ({install_hint('cuda12')} "
                                   "(cuda13 for a CUDA 13 driver))") from None
        self._nvml = pynvml
        try:  # any failure of the binding is a reason, never a traceback from bench
            pynvml.nvmlInit()
        except Exception as exc:  # noqa: BLE001
            raise PowerUnavailable(f"NVML cannot start: {_said(exc)}") from None
        try:
            self._handle = nvml_handle(pynvml, device)
            self.read()
        except PowerUnavailable:
            self.close()
            raise
        except Exception as exc:  # noqa: BLE001 (NVMLError NotSupported before Volta, or worse)
            self.close()
            raise PowerUnavailable(f"{_named(device)} has no NVML energy counter: {_said(exc)}") from None

    def read(self) -> int:
        try:
            reading = self._nvml.nvmlDeviceGetTotalEnergyConsumption(self._handle)
        except Exception as exc:  # noqa: BLE001 (the driver went away, say: that row's reason)
            raise PowerUnavailable(f"NVML's energy counter could not be read: {_said(exc)}") from None
        # an unsigned 64-bit count of millijoules: NaN, text or None is no reading
        if not isinstance(reading, int) or isinstance(reading, bool) or not 0 <= reading < 1 << 64:
            raise PowerUnavailable(f"NVML's energy counter read {str(reading)[:40]!r}, not a count "
                                   "of millijoules")
        return reading

    def close(self) -> None:
        try:
            self._nvml.nvmlShutdown()
        except Exception:  # noqa: BLE001 (closing what may never have opened)
            pass


def _said(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__


def energy_stretch(work: Callable[[], None], images_per_call: int, read: Callable[[], int],
                   clock: Callable[[], float] = time.monotonic,
                   min_seconds: float = MIN_ENERGY_S, min_updates: int = MIN_UPDATES,
                   max_seconds: float = 60.0, covers: str = NVML.says.format(device="the GPU")) -> dict:
    """Run `work` until at least `min_seconds` have passed and the counter `read` (mJ) has
    changed `min_updates` times. Average power is the counter's rise between its first and last
    change over the time between them (the counter steps, so the stretch's own ends would
    misread it); energy per image is that power over the stretch's time and images."""
    try:
        return _stretch(work, images_per_call, read, clock, min_seconds, min_updates, max_seconds, covers)
    except PowerUnavailable as exc:
        return {"source": NVML.name, "covers": covers, "samples": 0, "reason": str(exc)}


def _stretch(work, images_per_call, read, clock, min_seconds, min_updates, max_seconds, covers) -> dict:
    last = read()
    updates, calls, changes, start = 0, 0, [], clock()
    looked = start
    while True:
        work()
        calls += 1
        # the counter is read at most every READ_EVERY_S: reading it after every batch-1 call
        # slowed the work enough to add idle power to each image (H200: 893 mJ, not ~350)
        if clock() - looked >= READ_EVERY_S:
            now = clock()
            reading = read()
            if reading < last:
                raise PowerUnavailable(f"NVML's energy counter went back from {last} to {reading} mJ "
                                       "(a driver reload or a wrapped counter): no reading")
            # the rise since the counter last moved covers the time since then, not since the
            # last look (a counter that steps once a second gives a second's energy at once)
            since = now - (changes[-1][0] if changes else start)
            if reading > last and (reading - last) / max(since, READ_EVERY_S) > MAX_MW:
                raise PowerUnavailable(f"NVML's energy counter jumped by {reading - last} mJ in "
                                       f"{since:.2f} s, past what any board draws "
                                       f"({MAX_MW // 1_000_000} kW): no reading")
            looked = now
            if reading != last:
                updates, last = updates + 1, reading
                changes = [changes[0] if changes else (looked, reading), (looked, reading)]
        elapsed = clock() - start
        if (elapsed >= min_seconds and updates >= min_updates) or elapsed >= max_seconds:
            break
    images = calls * images_per_call
    entry = {"source": NVML.name, "covers": covers, "seconds": round(elapsed, 3),
             "samples": updates, "images": images,
             "counter_period_ms": round(elapsed / updates * 1e3, 1) if updates else None}
    (t0, e0), (t1, e1) = changes if len(changes) == 2 else ((0.0, 0), (0.0, 0))
    if updates < 2 or t1 <= t0 or e1 <= e0:
        return {**entry, "reason": f"NVML's energy counter rose {updates} times in "
                                   f"{elapsed:.1f} s: too few to measure"}
    mw = (e1 - e0) / (t1 - t0)  # mJ per s
    if mw > MAX_MW:
        return {**entry, "reason": f"NVML's energy counter rose at {mw / 1e6:.3g} kW, past what any "
                                   f"board draws ({MAX_MW // 1_000_000} kW): no reading"}
    return {**entry, "rails_mw": {"GPU board": round(mw, 1)},
            "mj_per_image": {"GPU board": round(mw * elapsed / images, 4)},
            "total_rail": "GPU board"}


class Sampler:
    """The source's command running in the background, each reading stamped as it arrives.
    `between(start, end)` gives the readings of one timed stretch (time.monotonic)."""

    def __init__(self, source: Source):
        self.source = source
        self._readings: list[tuple[float, dict[str, int]]] = []
        self.refused = 0  # lines the tool printed that are no reading (parse found no rails)
        self._lock = threading.Lock()
        self._process: subprocess.Popen | None = None
        self._thread: threading.Thread | None = None

    def __enter__(self) -> "Sampler":
        # stderr to a file, not a pipe nobody reads while the bench runs (a full pipe would
        # stall the tool); bytes that are not UTF-8 are replaced, not fatal to the reader
        self._errors = tempfile.TemporaryFile()
        try:
            # a session of its own, so stopping it stops whatever it started (a wrapper script's
            # child would otherwise hold the pipe open after the tool is gone)
            self._process = subprocess.Popen(self.source.command, stdout=subprocess.PIPE,
                                             stderr=self._errors, text=True, bufsize=1,
                                             encoding="utf-8", errors="replace",
                                             start_new_session=True)
        except OSError as exc:
            self._errors.close()
            raise PowerUnavailable(f"{self.source.name} could not start ({exc.strerror or exc}), "
                                   "so power was not measured") from None
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()
        return self

    def _read(self) -> None:
        stream = self._process.stdout
        try:
            while line := stream.readline(MAX_LINE):
                if not line.endswith("\n"):  # longer than any reading: skip to its end
                    while line and not line.endswith("\n"):
                        line = stream.readline(MAX_LINE)
                    self.refused += 1
                    continue
                rails = self.source.parse(line)
                self.refused += not rails
                if rails:
                    with self._lock:
                        self._readings.append((time.monotonic(), rails))
        except (OSError, ValueError):  # the pipe closed under the reader as the bench ended
            pass

    def __exit__(self, *exc) -> None:
        for signal_, wait in ((signal.SIGTERM, 2), (signal.SIGKILL, None)):
            try:
                os.killpg(self._process.pid, signal_)
            except ProcessLookupError:
                break
            try:
                self._process.wait(timeout=wait)
                break
            except subprocess.TimeoutExpired:
                continue
        self._thread.join(timeout=5)
        self._process.stdout.close()
        self._errors.close()

    def between(self, start: float, end: float) -> list[dict[str, int]]:
        with self._lock:
            return [rails for stamp, rails in self._readings if start <= stamp <= end]

    def stopped(self) -> str | None:
        """Why the source gave nothing, if it has ended: its exit code and first error line."""
        if self._process is None or self._process.poll() is None:
            return None
        self._errors.seek(0)
        first = self._errors.readline(200).decode("utf-8", "replace").strip()
        return f"{self.source.name} ended (exit code {self._process.returncode}){': ' + first if first else ''}"


def summarize(source: Source, readings: list[dict[str, int]], seconds: float,
              seconds_per_image: float) -> dict:
    """Average power per rail over one timed stretch and the energy each image took on it
    (mW x s = mJ); with fewer than MIN_SAMPLES readings, the reason instead of numbers."""
    entry = {"source": source.name, "covers": source.says, "interval_ms": INTERVAL_MS,
             "samples": len(readings)}
    if len(readings) < MIN_SAMPLES:
        return {**entry, "reason": f"{len(readings)} readings in the {seconds:.2f} s this ran, "
                                   f"fewer than {MIN_SAMPLES}: more --iterations make it longer"}
    rails = sorted({name for rails in readings for name in rails})
    average = {name: sum(r[name] for r in readings if name in r) / sum(name in r for r in readings)
               for name in rails}
    total = source.total or next((name for name in INPUT_RAILS if name in average), None)
    return {**entry, "rails_mw": {k: round(v, 1) for k, v in average.items()},
            "mj_per_image": {k: round(v * seconds_per_image, 4) for k, v in average.items()},
            "total_rail": total}
