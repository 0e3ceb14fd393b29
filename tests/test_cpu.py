"""The CPU facts reports carry: read from /proc/cpuinfo as each architecture writes it."""

import pytest

from resnet_edge.runtime.cpu import cpu_features

# abridged /proc/cpuinfo of three machines: an AVX2-only EPYC (Zen 2), a Xeon with AVX-512 VNNI
# (Cascade Lake) and an Orin's Cortex-A78AE
AVX2 = """processor\t: 0
vendor_id\t: AuthenticAMD
model name\t: AMD EPYC 7R32
flags\t\t: fpu vme sse sse2 ssse3 sse4_1 sse4_2 avx f16c avx2 fma bmi2
"""
VNNI = """processor\t: 0
model name\t: Intel(R) Xeon(R) Platinum 8275CL CPU @ 3.00GHz
flags\t\t: fpu sse4_2 avx avx2 avx512f avx512dq avx512cd avx512bw avx512vl avx512_vnni
"""
ORIN = """processor\t: 0
BogoMIPS\t: 62.50
Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp uscat ilrcpc flagm
CPU implementer\t: 0x41
"""


@pytest.mark.parametrize("text,machine,features,arithmetic", [
    (AVX2, "x86_64", ["avx2"], "VPMADDUBSW"),
    (VNNI, "x86_64", ["avx2", "avx512f", "avx512bw", "avx512_vnni"], "VNNI"),
    (ORIN, "aarch64", ["asimddp"], "ARM dot product"),
])
def test_int8_features_and_arithmetic(text, machine, features, arithmetic, tmp_path):
    (tmp_path / "cpuinfo").write_text(text)
    found = cpu_features(tmp_path / "cpuinfo", machine)
    assert found["features"] == features and found["int8_arithmetic"].startswith(arithmetic)
    assert ("saturating" in found["int8_arithmetic"]) == (text is AVX2)


def test_no_cpuinfo_says_unknown(tmp_path):
    found = cpu_features(tmp_path / "missing", "arm64")
    assert found["features"] is None and "unknown" in found["int8_arithmetic"]
