"""pytest plugin: the parity gates as one pytest test per backend x precision x gate.

Registered through the `pytest11` entry point, inert unless --parity-workdir is given:

    pytest --parity-workdir artifacts/resnet50 --parity-data imagefolder:/data/val --parity-limit 2000

Backends that cannot run here become skipped tests carrying the reason.
"""

from __future__ import annotations

import pytest


def pytest_addoption(parser):
    group = parser.getgroup("resnet-edge", "resnet-edge parity gates")
    group.addoption("--parity-workdir", help="Work directory made by `resnet-edge export`.")
    group.addoption("--parity-data", default="digits:test", help="Evaluation data spec.")
    group.addoption("--parity-backends", default="torch,ort,trt")
    group.addoption("--parity-precisions", default="fp32,fp16,int8,int8-fp16")
    group.addoption("--parity-limit", type=int, help="Use the first N images only.")
    group.addoption("--parity-batch-size", type=int, default=32)
    group.addoption("--parity-thresholds", help="TOML file overriding the default gates.")


class ParityGate(pytest.Item):
    def __init__(self, *, row: dict, gate: dict | None, **kwargs):
        super().__init__(**kwargs)
        self.row, self.gate = row, gate

    def runtest(self):
        if self.row["status"] == "skipped":
            pytest.skip(self.row["reason"])
        if self.gate["passed"] is None:
            pytest.skip(self.gate["note"])
        if not self.gate["passed"]:
            raise AssertionError(f"{self.row['device']}: {self.gate['gate']} = {self.gate['value']!r}, "
                                 f"threshold {self.gate['threshold']!r}")

    def repr_failure(self, excinfo):
        if isinstance(excinfo.value, AssertionError):
            return str(excinfo.value)
        return super().repr_failure(excinfo)

    def reportinfo(self):
        return self.path, None, self.name


class ParityCollector(pytest.Collector):
    def collect(self):
        from .parity.gates import load_thresholds
        from .parity.run import run_parity
        opt = self.config.getoption
        report = run_parity(opt("parity_workdir"), opt("parity_data"),
                            backends=opt("parity_backends").split(","),
                            precisions=opt("parity_precisions").split(","),
                            thresholds=load_thresholds(opt("parity_thresholds")),
                            limit=opt("parity_limit"), batch_size=opt("parity_batch_size"))
        for row in report["candidates"]:
            prefix = f"{row['backend']}-{row['precision']}"
            if row["status"] == "skipped":
                yield ParityGate.from_parent(self, name=f"{prefix}-available", row=row, gate=None)
            for gate in row["gates"]:
                yield ParityGate.from_parent(self, name=f"{prefix}-{gate['gate']}", row=row, gate=gate)


def pytest_collection_modifyitems(session, config, items):
    workdir = config.getoption("parity_workdir")
    if workdir:
        collector = ParityCollector.from_parent(session, name=f"parity[{workdir}]")
        items.extend(collector.collect())
