"""Numbers, dates and variables checked before any work, on the command line, in verify.py, the
pytest plugin and the library alike: NaN (which passes every comparison), impossible dates, the
empty value of an unset CI variable, and a SOURCE_DATE_EPOCH no library can take."""

import json

import pytest

from cli_output import one_line_error
from resnet_edge.deploy import archive, verify_bundle
from resnet_edge.errors import BadInput


@pytest.mark.parametrize("command,option", [
    ("parity", "--max-accuracy-drop-pt"), ("bench", "--max-latency-regression-pct"),
    ("train", "--lr"), ("bundle", "--classifier-threshold"), ("debug", "--tolerance"),
])
@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
def test_a_nan_or_infinite_gate_is_refused_before_the_work(command, option, value, digits_workdir, run_cli):
    first = "resnet20" if command == "train" else digits_workdir
    result = run_cli(command, first, option, value)
    said = result.stderr.strip().splitlines()[-1]
    assert result.exit_code == 2 and said.startswith(f"Error: Invalid value for '{option}'"), result.output
    assert "not a finite number" in said or ("inf" in value and "is not in the range" in said)


def test_a_nan_gate_in_the_library_and_the_plugin_is_refused(parity_main, measured, pytester, digits_workdir,
                                                             tmp_path):
    from resnet_edge.bench import compare_to_baseline
    from resnet_edge.parity.baseline import compare
    with pytest.raises(BadInput, match="the most accuracy may drop .points. nan is outside 0..100"):
        compare(parity_main, parity_main, "main.json", float("nan"))
    with pytest.raises(BadInput, match="must be a number, got True"):
        compare(parity_main, parity_main, "main.json", True)
    with pytest.raises(BadInput, match=r"the latency regression gate \(%\) nan is outside 0..1000"):
        compare_to_baseline(measured, measured, "main.json", float("nan"))
    main = tmp_path / "main.json"
    main.write_text(json.dumps(parity_main))
    result = pytester.runpytest_inprocess(f"--parity-workdir={digits_workdir}", f"--parity-baseline={main}",
                                          "--parity-max-accuracy-drop-pt=nan", "--collect-only")
    result.stdout.fnmatch_lines(["*--parity-max-accuracy-drop-pt nan is outside 0..100*"])


@pytest.mark.parametrize("text", ["2026-02-30", "2026-13-45", "0000-00-00", "2026-01-01T25:61:61Z", "",
                                  "2026-99-99T99:99:99Z"])
def test_an_impossible_min_created_is_refused_everywhere(text, tmp_path, run_cli):
    with pytest.raises(archive.BundleError, match="is not a date"):
        archive.created_bound(text)
    given = tmp_path / "b.tar.gz"
    given.write_bytes(b"")
    one_line_error(run_cli("verify", given, "--allow-unsigned", "--min-created", text), 2,
                   f"--min-created {text!r} is not a date")
    assert verify_bundle.main(["--bundle", str(given), "--allow-unsigned", "--min-created", text]) == 2
    with pytest.raises(archive.BundleError, match="is not a date"):  # the library's own callers
        verify_bundle.check_identity({}, "b", text)


def test_a_bundle_made_on_an_impossible_day_is_refused():
    identity = {"name": "b", "target": "jetpack6", "release": None, "created": "2026-99-99T99:99:99Z"}
    with pytest.raises(archive.BundleError, match="malformed 'bundle' record"):
        archive.read_identity({"bundle": identity})
    assert archive.read_identity({"bundle": {**identity, "created": "2028-02-29T23:59:59Z"}})


@pytest.mark.parametrize("value", ["-1", "253402300800", "99999999999999999999", "yesterday", "", "4294967296"])
def test_source_date_epoch_is_checked_before_any_library_reads_it(value, run_cli, monkeypatch):
    monkeypatch.setenv("SOURCE_DATE_EPOCH", value)
    one_line_error(run_cli("models"), 2, f"SOURCE_DATE_EPOCH={value!r} is not whole seconds since 1970")


def test_the_last_time_gzip_can_hold_is_taken(run_cli, monkeypatch):
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "4294967295")
    assert run_cli("models").exit_code == 0
