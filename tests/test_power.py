"""Power and clocks on a Jetson, read from what real devices print.

Every tegrastats and jetson_clocks line below was printed by a device and published; each says
where it comes from. The formats differ by release: JetPack 4 prints rails without a unit,
JetPack 5 on AGX Orin adds unused "NC" channels and upper-case sensors, JetPack 6 lower-case
sensors and GR3D as a list, and some boards have a whole-module input rail (VDD_IN) while
AGX Orin reports parts only."""

import json
import re

import pytest

from resnet_edge.runtime import power
from resnet_edge.runtime.latency import clocks_locked, jetson_conditions

# JetPack 5.1 (L4T R35), AGX Orin 64GB: catid/blog2022, content/posts/orin_opt.md ("AI on Jetson
# Orin", 2023-04-23; it installs JetPack 5.1's PyTorch wheel, .../jp/v51/pytorch/...)
JP5_AGX_ORIN = (
    "04-24-2023 00:01:24 RAM 1282/62795MB (lfb 15152x4MB) SWAP 0/31398MB (cached 0MB) CPU [0%@729,"
    "0%@729,0%@729,0%@729,0%@729,0%@729,0%@729,0%@729,0%@729,0%@729,0%@729,0%@729] EMC_FREQ 0%@2133 "
    "GR3D_FREQ 0%@0 GR3D2_FREQ 0%@0 VIC_FREQ 729 APE 174 CV0@-256C CPU@42.593C Tboard@32C "
    "SOC2@39.343C Tdiode@33.25C SOC0@39.375C CV1@-256C GPU@-256C tj@42.593C SOC1@40.468C CV2@-256C "
    "VDD_GPU_SOC 2399mW/2399mW VDD_CPU_CV 400mW/400mW VIN_SYS_5V0 4032mW/4032mW NC 0mW/0mW "
    "VDDQ_VDD2_1V8AO 301mW/301mW NC 0mW/0mW")
# JetPack 6.2.1 (L4T R36.4.4, /etc/nv_tegra_release "R36 (release), REVISION: 4.4"), AGX Orin:
# lesomnus/tegra-exporter, stats/parse_test.go at 0070ae5, three consecutive seconds
_JP6_CPU = ("CPU [14%@2188,5%@2112,8%@2035,14%@2201,46%@1267,47%@1267,2%@1267,10%@1267,4%@1036,"
            "5%@1036,6%@1036,10%@1036]")
JP6_AGX_ORIN = [
    f"05-09-2026 18:42:0{second} RAM 18207/62841MB (lfb 466x4MB) SWAP 86/31420MB (cached 0MB) "
    f"{_JP6_CPU} EMC_FREQ 3%@2133 GR3D_FREQ 0%@[0,0] NVENC 79%@166 NVDEC off NVJPG off NVJPG1 off "
    "VIC 36%@115 OFA off NVDLA0 off NVDLA1 off PVA0_FREQ off APE 174 cpu@52.562C soc2@48.437C "
    f"soc0@49.093C tj@52.562C soc1@49.656C VDD_GPU_SOC 2412mW/2412mW VDD_CPU_CV 1607mW/1607mW "
    f"VIN_SYS_5V0 {vin}"
    for second, vin in ((6, "4707mW/4707mW"), (7, "4607mW/4657mW"), (8, "4707mW/4674mW"))]
# Orin Nano, which has the module's input rail: henrygd/beszel, agent/gpu_test.go at 04600d8,
# case "orin nano" (printed 2025-06-18; the release is not stated there)
ORIN_NANO = (
    "06-18-2025 11:25:24 RAM 3452/7620MB (lfb 25x4MB) SWAP 1518/16384MB (cached 174MB) CPU [1%@1420,"
    "2%@1420,0%@1420,2%@1420,2%@729,1%@729] GR3D_FREQ 0% cpu@50.031C soc2@49.031C soc0@50C "
    "gpu@49.031C tj@50.25C soc1@50.25C VDD_IN 4824mW/4824mW VDD_CPU_GPU_CV 518mW/518mW "
    "VDD_SOC 1475mW/1475mW")
# JetPack 4 (TX2: VDD_SYS_* rails, no mW unit): the same beszel file, its "orin-style output" case
JP4_TX2 = (
    "RAM 3276/7859MB (lfb 5x4MB) SWAP 1626/12122MB (cached 181MB) CPU [44%@1421,49%@2031,67%@2034,"
    "17%@1420,25%@1419,8%@1420] EMC_FREQ 1%@1866 GR3D_FREQ 0%@114 APE 150 MTS fg 1% bg 1% "
    "PLL@42.5C MCPU@42.5C PMIC@50C Tboard@38C GPU@39.5C BCPU@42.5C thermal@41.3C Tdiode@39.25C "
    "VDD_SYS_GPU 182/182 VDD_SYS_SOC 730/730 VDD_4V0_WIFI 0/0 VDD_IN 5297/5297 VDD_SYS_CPU 1917/1917 "
    "VDD_SYS_DDR 1241/1241")
# Jetson Thor, JetPack 7 (L4T R38.4.0): lesomnus/tegra-exporter, stats/parse_test.go at 0070ae5
JP7_THOR = (
    "05-17-2026 10:00:32 RAM 4208/125773MB (lfb 31x4MB) SWAP 0/2048MB (cached 0MB) CPU [1%@972,0%@972,"
    "0%@972,0%@972,1%@972,0%@972,1%@972,1%@972,0%@972,0%@972,3%@972,0%@972,0%@972,1%@972] "
    "EMC_FREQ 0%@665 GR3D_FREQ @[0,0,0] NVENC0_FREQ @0 NVENC1_FREQ @0 NVDEC0_FREQ @0 NVDEC1_FREQ @0 "
    "NVJPG0_FREQ @0 VIC off OFA_FREQ @0 PVA0_FREQ off APE 300 cpu@34.468C tj@34.5C soc012@33.781C "
    "soc345@34.5C VDD_GPU 0mW/0mW VDD_CPU_SOC_MSS 4165mW/4165mW VIN_SYS_5V0 4126mW/4126mW")

# `jetson_clocks --show`, JetPack 5.1 AGX Orin, not locked: the catid post above
SHOW_JP5_NOT_LOCKED = """SOC family:tegra234  Machine:Jetson AGX Orin
Online CPUs: 0-11
cpu0: Online=1 Governor=schedutil MinFreq=729600 MaxFreq=2201600 CurrentFreq=2201600 IdleStates: WFI=1 c7=1
cpu1: Online=1 Governor=schedutil MinFreq=729600 MaxFreq=2201600 CurrentFreq=2201600 IdleStates: WFI=1 c7=1
cpu10: Online=1 Governor=schedutil MinFreq=729600 MaxFreq=2201600 CurrentFreq=1113600 IdleStates: WFI=1 c7=1
GPU MinFreq=306000000 MaxFreq=1300500000 CurrentFreq=306000000
EMC MinFreq=204000000 MaxFreq=3199000000 CurrentFreq=2133000000 FreqOverride=0
NV Power Mode: MAXN""".splitlines()
# Jetson Nano (L4T R32.7.6), the same board before and after `sudo jetson_clocks`:
# alefram/renee_perception, its Jetson performance-mode notes (2026-09-28)
SHOW_NANO_NOT_LOCKED = """cpu0: Online=1 Governor=schedutil MinFreq=102000 MaxFreq=1479000 CurrentFreq=825600 IdleStates: WFI=1 c7=1
GPU MinFreq=76800000 MaxFreq=921600000 CurrentFreq=76800000
EMC MinFreq=204000000 MaxFreq=1600000000 CurrentFreq=1600000000 FreqOverride=0""".splitlines()
SHOW_NANO_LOCKED = """cpu0: Online=1 Governor=schedutil MinFreq=1479000 MaxFreq=1479000 CurrentFreq=1479000 IdleStates: WFI=0 c7=0
GPU MinFreq=921600000 MaxFreq=921600000 CurrentFreq=921600000
EMC MinFreq=204000000 MaxFreq=1600000000 CurrentFreq=1600000000 FreqOverride=1""".splitlines()


@pytest.mark.parametrize("line,rails", [
    (JP5_AGX_ORIN, {"VDD_GPU_SOC": 2399, "VDD_CPU_CV": 400, "VIN_SYS_5V0": 4032, "VDDQ_VDD2_1V8AO": 301}),
    (JP6_AGX_ORIN[1], {"VDD_GPU_SOC": 2412, "VDD_CPU_CV": 1607, "VIN_SYS_5V0": 4607}),
    (ORIN_NANO, {"VDD_IN": 4824, "VDD_CPU_GPU_CV": 518, "VDD_SOC": 1475}),
    (JP4_TX2, {"VDD_SYS_GPU": 182, "VDD_SYS_SOC": 730, "VDD_4V0_WIFI": 0, "VDD_IN": 5297,
               "VDD_SYS_CPU": 1917, "VDD_SYS_DDR": 1241}),
    (JP7_THOR, {"VDD_GPU": 0, "VDD_CPU_SOC_MSS": 4165, "VIN_SYS_5V0": 4126}),
])
def test_every_rail_reads_as_its_current_milliwatts(line, rails):
    """The current value, not tegrastats' running average (4607, not 4657); RAM, SWAP, IRAM,
    temperatures and unused NC channels are not rails."""
    assert power.parse_tegrastats(line) == rails


def test_what_is_not_a_rail_is_not_read():
    assert power.parse_tegrastats("RAM 1180/3965MB (lfb 1x2MB) SWAP 149/1024MB (cached 7MB) "
                                  "IRAM 0/252kB(lfb 252kB) CPU [30%@1036] GPU@59C") == {}
    # a rail glued to something else is not a reading either
    assert power.parse_tegrastats("VDD_IN 4542mW/4000mWx") == {}


@pytest.mark.parametrize("line", [
    "VDD_IN " + "9" * 400 + "mW/4000mW",                       # OverflowError when averaged
    "VDD_IN 100000000000000000000mW/1mW",                      # 1e20 mW averaged as if real
    "VDD_IN 5000001mW/1mW VDD_SOC 1475mW/1475mW",              # past 5 kW: the line is no reading
    " ".join(f"R{i} 100mW/100mW" for i in range(20_000)),     # 20,000 rails
])
def test_a_reading_no_board_gives_is_no_reading(line):
    assert power.parse_tegrastats(line) == {}


def test_a_timed_stretch_averages_its_readings_into_energy_per_image():
    readings = [power.parse_tegrastats(line) for line in JP6_AGX_ORIN]
    summary = power.summarize(power.TEGRASTATS, readings, 0.3, seconds_per_image=0.002)
    assert summary["rails_mw"]["VIN_SYS_5V0"] == pytest.approx((4707 + 4607 + 4707) / 3, abs=0.05)
    # mW x s = mJ: 4673.7 mW for 2 ms an image
    assert summary["mj_per_image"]["VIN_SYS_5V0"] == pytest.approx(9.3473, abs=1e-4)
    assert summary["total_rail"] is None  # AGX Orin has no whole-module rail: none is claimed
    nano = power.summarize(power.TEGRASTATS, [power.parse_tegrastats(ORIN_NANO)] * 3, 0.3, 0.001)
    assert nano["total_rail"] == "VDD_IN" and nano["mj_per_image"]["VDD_IN"] == pytest.approx(4.824)
    short = power.summarize(power.TEGRASTATS, readings[:2], 0.15, 0.002)
    assert "rails_mw" not in short and "2 readings in the 0.15 s" in short["reason"]


def test_nvidia_smi_reads_watts_and_says_what_it_covers():
    assert power.parse_nvidia_smi("71.23\n") == {"GPU board": 71230}
    assert power.parse_nvidia_smi("[N/A]\n") == {}
    for hostile in ("nan", "inf", "-5.0", "71.2.3", "", "1e306", "5000.1"):  # no draw: not a reading
        assert power.parse_nvidia_smi(hostile + "\n") == {}, hostile
    assert power.NVIDIA_SMI.total == "GPU board" and "not the CPU's" in power.NVIDIA_SMI.says


class Counter:
    """An energy counter read from a script of values (NVML's returns mJ since the driver loaded)."""

    def __init__(self, values):
        self.values, self.reads = list(values), 0

    def read(self) -> int:
        value = self.values[min(self.reads, len(self.values) - 1)]
        self.reads += 1
        return value

    def close(self) -> None:
        pass


def no_counter(device):
    raise power.PowerUnavailable(f"{device['uuid']} has no NVML energy counter: Not Supported")


H100 = {"uuid": "GPU-7d1f2c3a-0000-4000-8000-000000000001", "pci_bus_id": "00000000:65:00.0", "mig": False}


class Board:
    """A GPU drawing `watts` whose energy counter steps every `period` s, as NVML's does, on a
    clock that only the work moves (each call of the row's work takes `step` s)."""

    def __init__(self, watts: float, period: float, step: float):
        self.watts, self.period, self.step, self.now = watts, period, step, 0.0

    def work(self):
        self.now += self.step

    def read(self) -> int:  # mJ at the counter's last update
        return int(self.now // self.period * self.period * self.watts * 1000)

    def clock(self) -> float:
        return self.now


def test_energy_is_the_counters_rise_over_a_stretch_long_enough_for_it():
    board = Board(watts=200, period=0.25, step=0.1)
    row = power.energy_stretch(board.work, 8, board.read, clock=board.clock)
    # at least 2 s and 10 counter updates, whichever is later: 2.5 s here
    assert row["seconds"] >= power.MIN_ENERGY_S and row["samples"] >= power.MIN_UPDATES
    assert row["counter_period_ms"] == pytest.approx(250, rel=0.05)
    assert row["rails_mw"]["GPU board"] == pytest.approx(200_000, rel=0.05)
    per_image_s = row["seconds"] / row["images"]
    assert row["mj_per_image"]["GPU board"] == pytest.approx(200 * 1000 * per_image_s, rel=0.05)
    # a slower counter makes the stretch longer, never the reading coarser
    board = Board(watts=200, period=0.5, step=0.1)
    slow = power.energy_stretch(board.work, 8, board.read, clock=board.clock)
    assert slow["seconds"] >= 10 * 0.5 - 0.5 and slow["samples"] >= power.MIN_UPDATES
    assert slow["rails_mw"]["GPU board"] == pytest.approx(200_000, rel=0.05)


def test_a_counter_that_does_not_move_gives_a_reason_not_a_number():
    board = Board(watts=200, period=0.25, step=0.5)
    stuck = power.energy_stretch(board.work, 1, Counter([7]).read, clock=board.clock, max_seconds=5)
    assert "rails_mw" not in stuck and "rose 0 times" in stuck["reason"] and stuck["seconds"] <= 5.5


def test_a_counter_that_fails_mid_row_is_that_rows_reason():
    board = Board(watts=200, period=0.25, step=0.1)

    def gone():
        raise power.PowerUnavailable("NVML's energy counter could not be read: GPU is lost")
    row = power.energy_stretch(board.work, 1, gone, clock=board.clock)
    assert "rails_mw" not in row and "GPU is lost" in row["reason"]


def test_the_source_is_whatever_this_machine_has():
    have = lambda *names: (lambda tool: f"/usr/bin/{tool}" if tool in names else None)  # noqa: E731
    assert power.find_source(have("tegrastats", "nvidia-smi")) is power.TEGRASTATS
    smi = power.find_source(have("nvidia-smi"), counter=no_counter, device=H100)
    # nvidia-smi on the CUDA device by its UUID, never -i 0 (NVML's order is not CUDA's)
    assert smi.name == "nvidia-smi" and smi.command[-2:] == ("-i", H100["uuid"])
    assert smi.says.startswith(f"{H100['uuid']}'s whole-board draw")
    with pytest.raises(power.PowerUnavailable, match="neither tegrastats .* nor nvidia-smi"):
        power.find_source(have(), counter=no_counter, device=H100)
    # NVML's counter before nvidia-smi's one-second average, and no GPU source for CPU rows
    nvml = power.find_source(have("nvidia-smi"), counter=lambda device: Counter([0]), device=H100)
    assert nvml.name == "nvml" and nvml.says.startswith(f"{H100['uuid']}'s whole-board energy")
    assert power.find_source(have("tegrastats"), gpu=False) is power.TEGRASTATS
    with pytest.raises(power.PowerUnavailable, match="GPU board's draw is not what CPU rows spend"):
        power.find_source(have("nvidia-smi"), counter=lambda device: Counter([0]), gpu=False)


class NVMLError(Exception):
    pass


class Nvml:
    """NVML as nvidia-ml-py presents it, for a machine of `boards` ({uuid: (bus id, MIG mode)}),
    listed in NVML's own order: handles by UUID or PCI bus id, and each board's MIG mode
    (NotSupported where the GPU has none)."""

    NVMLError = NVMLError
    NVML_DEVICE_MIG_ENABLE = 1

    def __init__(self, boards: dict):
        self.boards = boards

    def nvmlDeviceGetHandleByUUID(self, uuid):
        if uuid not in self.boards:
            raise NVMLError("Not Found")
        return uuid

    def nvmlDeviceGetHandleByPciBusId(self, bus):
        found = [uuid for uuid, (at, _mig) in self.boards.items() if at == bus]
        if not found:
            raise NVMLError("Not Found")
        return found[0]

    def nvmlDeviceGetHandleByIndex(self, index):
        return list(self.boards)[index]

    def nvmlDeviceIsMigDeviceHandle(self, handle):
        return handle.startswith("MIG-")

    def nvmlDeviceGetMigMode(self, handle):
        mig = self.boards[handle][1]
        if mig is None:
            raise NVMLError("Not Supported")
        return mig, mig


def test_the_energy_read_is_the_cuda_devices_never_nvml_index_0():
    other = "GPU-00000000-0000-4000-8000-0000000000ff"
    machine = Nvml({other: ("00000000:17:00.0", None), H100["uuid"]: (H100["pci_bus_id"], None)})
    assert machine.nvmlDeviceGetHandleByIndex(0) == other  # what GPU 0 used to read
    assert power.nvml_handle(machine, H100) == H100["uuid"]
    # no UUID from an older torch: the PCI bus id finds the same board
    assert power.nvml_handle(machine, {**H100, "uuid": ""}) == H100["uuid"]
    with pytest.raises(power.PowerUnavailable, match="NVML finds no GPU with the CUDA device's UUID"):
        power.nvml_handle(machine, {"uuid": "GPU-gone", "pci_bus_id": "00000000:99:00.0", "mig": False})


def test_a_mig_instance_gets_no_power_reading_from_its_shared_board():
    have = lambda *names: (lambda tool: f"/usr/bin/{tool}" if tool in names else None)  # noqa: E731
    board = Nvml({H100["uuid"]: (H100["pci_bus_id"], 1)})  # MIG mode on
    with pytest.raises(power.SharedBoard, match="is a MIG instance: the board's power counters"):
        power.nvml_handle(board, H100)
    with pytest.raises(power.SharedBoard):
        power.nvml_handle(Nvml({"MIG-1": ("", None)}), {"uuid": "MIG-1", "pci_bus_id": None, "mig": False})
    # CUDA_VISIBLE_DEVICES=MIG-...: nvidia-smi's board draw is refused as well
    with pytest.raises(power.SharedBoard):
        power.find_source(have("nvidia-smi"), counter=no_counter, device={**H100, "mig": True})

    def counter(device):
        power.nvml_handle(board, device)
    with pytest.raises(power.SharedBoard):
        power.find_source(have("nvidia-smi"), counter=counter, device=H100)
    assert power.nvml_handle(Nvml({H100["uuid"]: (H100["pci_bus_id"], 0)}), H100) == H100["uuid"]


@pytest.mark.parametrize("show,locked", [
    (SHOW_NANO_LOCKED, True),
    (SHOW_NANO_NOT_LOCKED, False),
    (SHOW_JP5_NOT_LOCKED, False),
    (["Please run as root"], None),  # jetson_clocks without root shows nothing to judge
])
def test_locked_clocks_are_told_by_jetson_stats_rule(show, locked):
    assert clocks_locked(show) is locked


def _stub(directory, name, body):
    path = directory / name
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(0o755)


def test_a_jetson_records_whether_its_clocks_are_locked(tmp_path, monkeypatch):
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "nv_tegra_release").write_text("# R35 (release), REVISION: 2.1\n")
    stub = tmp_path / "bin"
    stub.mkdir()
    _stub(stub, "jetson_clocks", "cat <<'EOF'\n" + "\n".join(SHOW_NANO_LOCKED) + "\nEOF\n")
    monkeypatch.setenv("PATH", f"{stub}:/usr/bin:/bin")
    assert jetson_conditions(tmp_path)["clocks"] == "locked"
    _stub(stub, "jetson_clocks", "echo 'Please run as root'; exit 1\n")
    assert jetson_conditions(tmp_path)["clocks"] is None


@pytest.fixture
def tegrastats_here(tmp_path, monkeypatch):
    """A `tegrastats` that prints the JetPack 6 lines above, as the device would, every 5 ms (so a
    fast CPU's short timed loop still gets readings: the tests count them, not the time)."""
    stub = tmp_path / "bin"
    stub.mkdir()
    lines = "".join(f"  echo '{line}'; sleep 0.005\n" for line in JP6_AGX_ORIN)
    _stub(stub, "tegrastats", f"while :; do\n{lines}done\n")
    monkeypatch.setenv("PATH", f"{stub}:/usr/bin:/bin")


def test_bench_reads_power_while_each_row_runs(tegrastats_here, digits_workdir, tmp_path, run_cli):
    result = run_cli("bench", digits_workdir, "--backends", "ort", "--precisions", "fp32",
                     "--batch-sizes", "8", "--iterations", "150", "--power", "--json", tmp_path / "b.json")
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "b.json").read_text())
    assert report["power"]["source"] == "tegrastats"
    row = report["results"][0]
    reading = row["power"]
    assert reading["samples"] >= power.MIN_SAMPLES, reading
    assert 4607 <= reading["rails_mw"]["VIN_SYS_5V0"] <= 4707
    per_image_s = row["host_to_host"]["mean_ms"] / 1e3 / 8
    assert reading["mj_per_image"]["VDD_GPU_SOC"] == pytest.approx(2412 * per_image_s, rel=1e-3)
    assert re.search(r"power from tegrastats", result.stdout) and "VIN_SYS_5V0" in result.stdout


def test_bench_power_without_a_source_says_so_in_one_line_and_runs(digits_workdir, tmp_path,
                                                                   monkeypatch, run_cli):
    monkeypatch.setenv("PATH", str(tmp_path))  # neither tegrastats nor nvidia-smi
    result = run_cli("bench", digits_workdir, "--backends", "ort", "--precisions", "fp32",
                     "--batch-sizes", "1", "--iterations", "3", "--power", "--json", tmp_path / "b.json")
    assert result.exit_code == 0, result.output
    said = [line for line in result.stderr.splitlines() if "power" in line]
    assert len(said) == 1 and "no power source" in said[0]
    report = json.loads((tmp_path / "b.json").read_text())
    assert "no power source" in report["power"]["reason"] and "power" not in report["results"][0]


def test_a_tegrastats_that_dies_says_why(tmp_path, monkeypatch, digits_workdir, run_cli):
    stub = tmp_path / "bin"
    stub.mkdir()
    _stub(stub, "tegrastats", "printf 'tegrastats: permission denied\\033[2J\\n' >&2; exit 1\n")
    monkeypatch.setenv("PATH", f"{stub}:/usr/bin:/bin")
    result = run_cli("bench", digits_workdir, "--backends", "ort", "--precisions", "fp32",
                     "--batch-sizes", "1", "--iterations", "5", "--power", "--json", tmp_path / "b.json")
    assert result.exit_code == 0, result.output
    reading = json.loads((tmp_path / "b.json").read_text())["results"][0]["power"]
    assert reading["samples"] == 0
    assert reading["reason"] == "tegrastats ended (exit code 1): tegrastats: permission denied\x1b[2J"
    assert "permission denied\\x1b[2J" in result.stdout and "\x1b" not in result.output  # shown, not obeyed



@pytest.mark.timeout(120)
def test_a_hostile_power_tool_is_one_reason_and_the_bench_finishes(tmp_path, monkeypatch, digits_workdir,
                                                                  run_cli):
    """It prints readings no board gives and a line longer than any reading, writes escape
    sequences to stderr, ignores SIGTERM, and leaves a child holding its stdout open."""
    stub = tmp_path / "bin"
    stub.mkdir()
    _stub(stub, "tegrastats", "trap '' TERM\nprintf '\\033]0;owned\\007\\033[2J' >&2\n"
          "head -c 1000000 /dev/zero | tr '\\0' 'x'; echo\n"
          "sh -c \"trap '' TERM; while :; do echo 'VDD_IN " + "9" * 400 + "mW/1mW'; sleep 0.005; done\" &\n"
          "while :; do echo 'VDD_IN 100000000000000000000mW/1mW'; sleep 0.005; done\n")
    monkeypatch.setenv("PATH", f"{stub}:/usr/bin:/bin")
    result = run_cli("bench", digits_workdir, "--backends", "ort", "--precisions", "fp32", "--batch-sizes", "8",
                     "--iterations", "150", "--power", "--json", tmp_path / "b.json")
    assert result.exit_code == 0, result.output
    assert "Traceback" not in result.output and "\x1b" not in result.output
    reading = json.loads((tmp_path / "b.json").read_text())["results"][0]["power"]
    assert reading["reason"].startswith("tegrastats printed ") and "lines that are no reading" in reading["reason"]
    assert "rails_mw" not in reading


def test_a_tegrastats_that_cannot_start_or_prints_bytes_says_so(tmp_path, monkeypatch, digits_workdir,
                                                               run_cli):
    stub = tmp_path / "bin"
    stub.mkdir()
    (stub / "tegrastats").write_text("#!/nonexistent/interpreter\n")  # found on PATH, cannot run
    (stub / "tegrastats").chmod(0o755)
    monkeypatch.setenv("PATH", f"{stub}:/usr/bin:/bin")
    args = ("bench", digits_workdir, "--backends", "ort", "--precisions", "fp32", "--batch-sizes", "8",
            "--iterations", "150", "--power", "--json", tmp_path / "b.json")
    result = run_cli(*args)
    assert result.exit_code == 0, result.output
    assert "tegrastats could not start" in result.stderr
    assert "could not start" in json.loads((tmp_path / "b.json").read_text())["power"]["reason"]
    # bytes that are not UTF-8 between good lines: the good ones are still read
    good = JP6_AGX_ORIN[0]
    _stub(stub, "tegrastats", f"while :; do printf '\\377\\376 garbage\\n'; echo '{good}'; sleep 0.005; done\n")
    result = run_cli(*args)
    assert result.exit_code == 0, result.output
    reading = json.loads((tmp_path / "b.json").read_text())["results"][0]["power"]
    assert reading["samples"] >= power.MIN_SAMPLES and reading["rails_mw"]["VIN_SYS_5V0"] == 4707


class Sequence:
    """A counter reading `values` in turn, then its last one: what a broken or wrapped counter gives."""

    def __init__(self, values):
        self.values = list(values)

    def read(self):
        return self.values.pop(0) if len(self.values) > 1 else self.values[0]


@pytest.mark.parametrize("values,said", [
    ([1000, 2000, 3000, 2 ** 64 - 1], "jumped by"),  # a wrap or a garbage read
    ([1000, 2000, 10 ** 18], "jumped by"),
    ([10 ** 9, 10 ** 9 + 50, 40, 90, 140], "went back from"),  # a driver reload
])
def test_a_counter_that_jumps_or_falls_is_that_rows_reason(values, said):
    """A jump was reported as 3e8 to 1e290 mW; a fall as "rose 188 times: too few"."""
    board = Board(watts=200, period=0.25, step=0.1)
    row = power.energy_stretch(board.work, 1, Sequence(values).read, clock=board.clock)
    assert "rails_mw" not in row and said in row["reason"], row


def test_a_steady_counter_past_5_kw_is_no_reading():
    board = Board(watts=9000, period=0.25, step=0.1)  # 9 kW: no board draws that
    row = power.energy_stretch(board.work, 1, board.read, clock=board.clock)
    assert "rails_mw" not in row and "past what any board draws" in row["reason"]
    # a counter stepping once a second at 700 W is a real board, however rarely it moves
    board = Board(watts=700, period=1.0, step=0.1)
    row = power.energy_stretch(board.work, 1, board.read, clock=board.clock, max_seconds=30)
    assert row["rails_mw"]["GPU board"] == pytest.approx(700_000, rel=0.05)


class Binding:
    """nvidia-ml-py's surface with the counter returning `value`, or raising it when it is an
    exception (not NVMLError: a binding or a driver can fail in any way)."""

    class NVMLError(Exception):
        pass

    NVML_DEVICE_MIG_ENABLE = 1

    def __init__(self, value):
        self.value = value

    def nvmlInit(self):
        pass

    def nvmlShutdown(self):
        pass

    def nvmlDeviceGetHandleByUUID(self, uuid):
        return uuid

    def nvmlDeviceIsMigDeviceHandle(self, handle):
        return False

    def nvmlDeviceGetMigMode(self, handle):
        return 0, 0

    def nvmlDeviceGetTotalEnergyConsumption(self, handle):
        if isinstance(self.value, BaseException):
            raise self.value
        return self.value


@pytest.mark.parametrize("value,said", [
    (float("nan"), "not a count"), (float("inf"), "not a count"), (None, "not a count"),
    ("12", "not a count"), (-5, "not a count"), (True, "not a count"),
    (OSError("libnvidia-ml.so.1: cannot open shared object file"), "could not be read: libnvidia-ml"),
    (TypeError("bad argument"), "could not be read: bad argument"),
])
def test_every_failure_of_the_binding_is_a_reason(value, said, monkeypatch):
    """A NaN, inf, None or text reading, or an error that is not NVMLError, escaped `bench
    --power` as a traceback."""
    import sys
    monkeypatch.setitem(sys.modules, "pynvml", Binding(value))
    with pytest.raises(power.PowerUnavailable, match=said):
        power.EnergyCounter(H100)
