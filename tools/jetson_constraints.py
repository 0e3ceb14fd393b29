"""pip constraints that keep a Jetson's own PyTorch when resnet-edge is installed there.

JetPack's torch is NVIDIA's wheel, built for the board's CUDA (12.6 on JetPack 6); PyPI's
aarch64 torch needs CUDA 13's server libraries, which a Jetson does not have. pip replaces the
installed torch whenever something asks for a version it does not satisfy; PyPI's torchvision
pins one exact torch, so a Jetson without NVIDIA's torchvision lost its torch to it. Pinning
torch and torchvision to what is installed makes that a resolution error instead, and NumPy
stays on the major those wheels were built against (NumPy 2.0 broke the C ABI: an extension
built against 1.x cannot run on 2.x; NumPy's "NumPy 2 ABI handling", doc/2.0/dev/
depending_on_numpy.html). `make venv` on a Jetson writes this file from the venv's Python
(which sees the system site-packages) and hands it to pip with -c.

Prints the constraints; exits 2 with one line when torch or torchvision is missing.
"""

import sys
from importlib import metadata


def installed(name):
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def main() -> int:
    torch, torchvision, numpy = installed("torch"), installed("torchvision"), installed("numpy")
    where = ("install NVIDIA's PyTorch for JetPack first (README: Installing the tool on a Jetson), "
             "then make venv again")
    if torch is None:
        print(f"error: torch is not installed on this Jetson; {where}", file=sys.stderr)
        return 2
    if torchvision is None:
        print(f"error: torchvision is not installed beside torch {torch}: PyPI's torchvision would "
              f"replace it with PyPI's CUDA 13 torch; install the torchvision built for torch {torch} "
              "(README: Installing the tool on a Jetson), then make venv again", file=sys.stderr)
        return 2
    print(f"torch=={torch}")
    print(f"torchvision=={torchvision}")
    if numpy is not None and numpy.split(".")[0] == "1":
        print("numpy<2")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
