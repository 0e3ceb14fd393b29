"""pytest plugin: the parity gates as pytest tests, one per backend x precision x gate.

Registered through the `pytest11` entry point, inert unless --parity-workdir is given:

    pytest --parity-workdir artifacts/resnet50 --parity-data imagefolder:/data/val --parity-limit 2000

The tests are known from the options and the thresholds alone, so `--collect-only` runs
nothing; the parity pass runs once, when the first gate test runs, and every test reads it.
Node ids read `resnet-edge-parity::ort-fp16::top1_agreement_pct` (JUnit: classname
`resnet-edge-parity.ort-fp16`, name `top1_agreement_pct`); pick some with
`-k "ort-fp16 and max_abs"`. A backend that cannot run here skips its tests with the reason;
one named in --parity-backends (or --parity-ort-providers) fails them instead, as the command
exits 3. With --parity-baseline main.json, each backend x precision also gets
`against_baseline`. --parity-json and --parity-html write the pass's report for the CI's
artifacts, as `parity --json/--html` do.
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import pytest

from .errors import DataNote, DataWarning

ROOT = "resnet-edge-parity"


def pytest_addoption(parser):
    group = parser.getgroup("resnet-edge", "resnet-edge parity gates")
    group.addoption("--parity-workdir", help="Work directory made by `resnet-edge export`.")
    group.addoption("--parity-data", help="Evaluation data spec [the test split of the built-in "
                    "dataset the model was trained on; required for any other model].")
    group.addoption("--parity-backends",
                    help="Comma list of torch, ort, trt [all; those named here must run: their "
                    "tests fail, not skip, where they cannot].")
    group.addoption("--parity-precisions",
                    help="Comma list of fp32, tf32, fp16, int8, int8-fp16 [fp32,fp16,int8,int8-fp16].")
    group.addoption("--parity-device", default="auto", choices=("auto", "cpu", "cuda"),
                    help="Where torch and ONNX Runtime run [auto: $RESNET_EDGE_DEVICE where set, "
                    "else cuda when there is a GPU].")
    group.addoption("--parity-ort-providers",
                    help="ONNX Runtime's providers side by side (tensorrt, cuda, cpu), each "
                    "probed first; their tests are named ort-<provider>-<precision>.")
    group.addoption("--parity-limit", type=int, help="Use the first N images only.")
    group.addoption("--parity-batch-size", type=int,
                    help="Images per batch [32, within the model's batch profile].")
    group.addoption("--parity-thresholds", help="TOML file overriding the default gates.")
    group.addoption("--parity-baseline", help="An earlier `parity --json` report (main's, say) of "
                    "this model on this data: adds an `against_baseline` test per backend x "
                    "precision, failing when its top-1 fell more than --parity-max-accuracy-drop-pt.")
    group.addoption("--parity-max-accuracy-drop-pt", type=float, default=0.5,
                    help="With --parity-baseline: the most a row's top-1 may fall, in points [0.5].")
    group.addoption("--parity-json", help="Write the parity report as JSON to FILE (as parity --json).")
    group.addoption("--parity-html", help="Write the self-contained HTML report to FILE (as parity --html).")


DEFAULT_BACKENDS, DEFAULT_PRECISIONS = "torch,ort,trt", "fp32,fp16,int8,int8-fp16"
# the command's flags, in reasons the library words for the command line, as the plugin's
_FLAGS = re.compile(r"--(backends|precisions|device|ort-providers|data|limit|batch-size|thresholds|baseline)\b")


def plugin_words(text: str) -> str:
    """A reason as this plugin's user types it: --backends is --parity-backends here."""
    return _FLAGS.sub(r"--parity-\1", text)


def _csv(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


def _backends(config) -> list[str]:
    from .parity.run import with_providers
    providers = config.getoption("parity_ort_providers")
    return with_providers(_csv(config.getoption("parity_backends") or DEFAULT_BACKENDS),
                          _csv(providers) if providers is not None else None)


def _named_backends(config) -> list[str]:
    """The backends named by --parity-backends or --parity-ort-providers: they must run."""
    from .parity.run import named_backends
    backends, providers = config.getoption("parity_backends"), config.getoption("parity_ort_providers")
    return named_backends(_csv(backends) if backends is not None else None,
                          _csv(providers) if providers is not None else None)


def _precisions(config) -> list[str]:
    return _csv(config.getoption("parity_precisions") or DEFAULT_PRECISIONS)


class ParityRun:
    """The one parity pass all gate tests share, run on first use; an error in it is raised
    again by every test that reads it, so each says why."""

    def __init__(self, config: pytest.Config, thresholds, baseline: dict | None = None):
        self.config, self.thresholds, self.baseline = config, thresholds, baseline
        self._report: dict | None = None
        self._error: BaseException | None = None
        self.said: list[str] = []  # the pass's data warnings and notes, for the summary

    def against_baseline(self, backend: str, precision: str) -> dict | None:
        """The row's verdict against the baseline; None where the row did not run here."""
        from .parity.baseline import compare
        if self.row(backend, precision)["status"] != "ran":
            return None
        opt = self.config.getoption
        if "baseline" not in self._report:
            self._report["baseline"] = compare(self._report, self.baseline, opt("parity_baseline"),
                                               opt("parity_max_accuracy_drop_pt"))
        return next(r for r in self._report["baseline"]["rows"]
                    if (r["backend"], r["precision"]) == (backend, precision))

    def row(self, backend: str, precision: str) -> dict:
        if self._report is None and self._error is None:
            from .parity.run import run_parity
            opt = self.config.getoption
            named = _named_backends(self.config)
            try:
                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always", DataWarning)
                    self._report = self._said(caught, lambda: run_parity(
                    opt("parity_workdir"), opt("parity_data"),
                    backends=_backends(self.config), precisions=_precisions(self.config),
                    thresholds=self.thresholds, limit=opt("parity_limit"),
                    batch_size=opt("parity_batch_size"), device=opt("parity_device"),
                    named_backends=named,
                    cpu_fp16="torch" in named and "fp16" in _csv(opt("parity_precisions") or ""),
                    keep_disagreements=opt("parity_html") is not None,
                    before_pass=self._comparable()))
            except Exception as exc:  # noqa: BLE001 (re-raised in every gate test)
                self._error = exc
        if self._error is not None:
            raise self._error
        return next(r for r in self._report["candidates"]
                    if (r["backend"], r["precision"]) == (backend, precision))

    def _said(self, caught: list, work):
        """`work()`, its data warnings kept for the terminal summary in the plugin's words: as
        pytest warnings they pointed at the library's line, which no user can act on."""
        try:
            return work()
        finally:
            for warning in caught:
                if issubclass(warning.category, DataWarning):
                    kind = "note" if issubclass(warning.category, DataNote) else "warning"
                    self.said.append(f"{kind}: {plugin_words(str(warning.message))}")
                else:
                    warnings.warn(warning.message, warning.category)

    def _comparable(self):
        """The baseline held to this run's model and images before the pass (or nothing)."""
        if self.baseline is None:
            return None
        from .parity.baseline import refuse_incomparable
        where = self.config.getoption("parity_baseline")
        return lambda model, data: refuse_incomparable(self.baseline, model, data, where)

    @property
    def report(self) -> dict | None:
        """The pass's report once it has run (None before, or where it failed)."""
        return self._report

    def write_reports(self) -> list[str]:
        """--parity-json and --parity-html, as the command writes them, once the gates ran;
        what could not be written (a full disk, a pipe nobody reads), a line each."""
        from .errors import BadInput
        from .parity import report as reports
        problems = []
        for option, writer in (("parity_json", reports.write_json), ("parity_html", reports.write_html)):
            path = self.config.getoption(option)
            if path and self._report is not None:
                try:
                    writer(self._report, path)
                except (BadInput, OSError) as exc:
                    problems.append(f"--{option.replace('_', '-')} {path} was not written: {exc}")
        return problems


class GateFailure(AssertionError):
    pass


class ParityGate(pytest.Item):
    def __init__(self, *, run: ParityRun, backend: str, precision: str, **kwargs):
        super().__init__(**kwargs)
        self.run, self.backend, self.precision = run, backend, precision

    def runtest(self):
        from .parity.gates import describe
        row = self.run.row(self.backend, self.precision)
        if row["status"] == "skipped":
            self.cannot_run(row)
        gate = next(g for g in row["gates"] if g["gate"] == self.name)
        if gate["passed"] is None:
            pytest.skip(gate["note"])
        if not gate["passed"]:
            raise GateFailure(f"{row['device']}: {describe(gate)}")

    def cannot_run(self, row: dict):
        """A row that cannot run here: skipped with the reason, or failed where its backend was
        named (--parity-backends), as the command exits 3."""
        reason = plugin_words(row["reason"])
        if f"{row['backend']} {row['precision']}" in self.run.report["summary"]["explicit_backends_missing"]:
            raise GateFailure(f"{row['backend']} {row['precision']} was asked for (--parity-backends) "
                              f"but cannot run here: {reason}")
        pytest.skip(reason)

    def repr_failure(self, excinfo):
        """A failed gate, or this tool's error (a missing work dir, a baseline of another
        model), as one line, as on the command line; anything else with its traceback."""
        from .errors import one_line, translate
        if isinstance(excinfo.value, GateFailure):
            return str(excinfo.value)
        mapped = translate(excinfo.value)
        return f"error: {one_line(mapped)}" if mapped else super().repr_failure(excinfo)

    def reportinfo(self):
        return self.path, None, f"{self.backend} {self.precision} {self.name}"


class BaselineGate(ParityGate):
    """The row against the same row of an earlier report: top-1 (agreement where there are no
    labels) may fall no more than --parity-max-accuracy-drop-pt."""

    def runtest(self):
        compared = self.run.against_baseline(self.backend, self.precision)
        if compared is None:
            self.cannot_run(self.run.row(self.backend, self.precision))
        if compared["verdict"] == "no baseline":
            pytest.skip(f"the baseline has no {self.backend} {self.precision} row")
        if compared["verdict"] == "regression":
            from .parity.baseline import change
            limit = self.config.getoption("parity_max_accuracy_drop_pt")
            raise GateFailure(f"{self.backend} {self.precision}: {change(compared)} against "
                              f"the baseline (limit -{limit:g} pt)")


class CandidateGates(pytest.Collector):
    def __init__(self, *, run: ParityRun, backend: str, precision: str, **kwargs):
        super().__init__(**kwargs)
        self.run, self.backend, self.precision = run, backend, precision

    def collect(self):
        from .parity.gates import for_precision, gate_names
        for gate in gate_names(for_precision(self.run.thresholds, self.precision)):
            yield ParityGate.from_parent(self, name=gate, run=self.run, backend=self.backend,
                                         precision=self.precision)
        if self.run.baseline is not None:
            yield BaselineGate.from_parent(self, name="against_baseline", run=self.run,
                                           backend=self.backend, precision=self.precision)


class ParityGates(pytest.Collector):
    def collect(self):
        from .errors import BadInput, number_in
        from .parity.baseline import read_baseline
        from .parity.gates import load_thresholds
        from .parity.run import candidates
        opt = self.config.getoption
        try:  # bad options are one line, as on the command line, not a traceback
            number_in(opt("parity_max_accuracy_drop_pt"), 0, 100, "--parity-max-accuracy-drop-pt")
            _check_outputs(self.config)
            baseline = opt("parity_baseline") and read_baseline(opt("parity_baseline"))
            run = ParityRun(self.config, load_thresholds(opt("parity_thresholds")), baseline or None)
            pairs = candidates(_backends(self.config), _precisions(self.config))
        except BadInput as exc:
            raise self.CollectError(str(exc)) from None
        self.config.stash[RUN_KEY] = run  # the session's end writes its reports
        for backend, precision in pairs:
            yield CandidateGates.from_parent(self, name=f"{backend}-{precision}", run=run,
                                             backend=backend, precision=precision)


def _check_outputs(config) -> None:
    """--parity-json and --parity-html as the command checks its outputs, before the pass: no
    `-` (standard output is pytest's), neither one the other, none an input (the baseline,
    the thresholds, the data) or an artifact of the work dir."""
    from . import outputs
    from .artifacts import ensure_writable_dir
    from .cli.common import data_paths
    from .errors import BadInput
    opt = config.getoption
    named = {f"--{o.replace('_', '-')}": opt(o) for o in ("parity_json", "parity_html") if opt(o)}
    workdir = Path(opt("parity_workdir"))
    try:
        for option, path in named.items():
            if path == "-":
                raise BadInput(f"{option} - would write a file named '-' (standard output is "
                               f"pytest's): give {option} a file name")
            stream, target = outputs.output_target(path)
            if not stream:
                ensure_writable_dir(target.parent)
        outputs.refuse_clobbering(
            named, reads=(opt("parity_baseline"), opt("parity_thresholds"),
                          *data_paths(opt("parity_data")), workdir if workdir.is_file() else None),
            guards=(workdir if workdir.is_dir() else None,))
        for path in named.values():
            outputs.hold_pipe(path)
    except outputs.OutputRefused as exc:
        raise BadInput(str(exc)) from None


RUN_KEY = pytest.StashKey["ParityRun"]()


def pytest_sessionfinish(session):
    """The reports, once every gate ran; one that cannot be written fails the session with a
    line saying why, never a traceback after green tests."""
    run = session.config.stash.get(RUN_KEY, None)
    problems = run.write_reports() if run is not None else []
    if problems:
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        for line in problems:
            if reporter is not None:
                reporter.write_line(f"error: {line}", red=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    run = config.stash.get(RUN_KEY, None)
    if run is not None and run.said:
        terminalreporter.section("resnet-edge parity")
        for line in run.said:
            terminalreporter.write_line(line)


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):
    """The gates join the session's own collection, so counts, -k, -m, --collect-only and
    --deselect treat them like any other test."""
    outcome = yield
    workdir = collector.config.getoption("parity_workdir")
    if workdir and isinstance(collector, pytest.Session):
        report = outcome.get_result()
        if report.passed:
            report.result.append(ParityGates.from_parent(collector, name=ROOT, nodeid=ROOT,
                                                         path=Path(workdir).resolve()))
