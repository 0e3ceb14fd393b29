"""What a report's numbers mean for the exit code: the one judgement `parity`, `bench` and
`api.check` make, so a script and the command agree on every report."""

from __future__ import annotations

from .errors import BadInput, GateFailed, MissingBackend


def judge(report) -> dict:
    """`report` (a parity or bench report, as the command or the API returns it, or read back
    from --json) as the command judges it: GateFailed (exit 1) where a gate failed or a row
    regressed against its baseline, MissingBackend (exit 3) where a backend the caller named
    could not run; else the report."""
    from .bench import SCHEMA as BENCH
    from .parity.run import SCHEMA as PARITY
    schema = report.get("schema") if isinstance(report, dict) else None
    if schema not in (PARITY, BENCH):
        raise BadInput(f"check judges a report from parity or bench ({PARITY} or {BENCH}); got "
                       f"{_what(report)}")
    try:
        return (_parity if schema == PARITY else _bench)(report)
    except (KeyError, TypeError, AttributeError, IndexError) as exc:
        raise BadInput(f"the {schema} report is incomplete ({type(exc).__name__}: {exc}); give "
                       "it as parity or bench returned it") from None


def _what(report) -> str:
    if isinstance(report, dict):
        return f"a dict with schema {report.get('schema')!r}" if "schema" in report else "a dict without a schema"
    return f"{type(report).__name__} {str(report)[:40]!r}"


def _parity(report: dict) -> dict:
    from .parity.baseline import change
    from .parity.gates import failed_gates
    summary = report["summary"]
    if summary["failed_gates"]:
        raise GateFailed(f"parity gates failed: {failed_gates(report['candidates'])}")
    baseline = report.get("baseline") or {}
    if baseline.get("regressions"):
        raise GateFailed("accuracy regression against the baseline: " + "; ".join(
            f"{r['backend']} {r['precision']} {change(r)} (limit -{baseline['max_accuracy_drop_pt']:g})"
            for r in baseline["regressions"]))
    if summary["explicit_backends_missing"]:
        missing = set(summary["explicit_backends_missing"])
        raise MissingBackend("asked for but cannot run here: "
                             + "; ".join(f"{r['backend']} {r['precision']} ({r['reason']})"
                                         for r in report["candidates"]
                                         if f"{r['backend']} {r['precision']}" in missing))
    return report


def _bench(report: dict) -> dict:
    from .backends import CPU_FP16
    from .bench import slowdown
    regressions = (report.get("baseline") or {}).get("regressions")
    if regressions:
        raise GateFailed("latency regression against the baseline: " + "; ".join(map(slowdown, regressions)))
    named = report.get("named_backends") or []
    asked = [s for s in report["skipped"] if s["backend"].removesuffix("+graph") in named
             and s["reason"] != CPU_FP16]
    if asked:
        raise MissingBackend("asked for but cannot run here: " + "; ".join(
            f"{s['backend']} {s['precision']} ({s['reason']})" for s in asked))
    return report
