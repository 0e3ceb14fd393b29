"""The fleet deploy's two ends without a network: the controller's refusals (before Ansible or
any host is touched) and the device's release.py (extract, switch, prune, rollback, the lock, the
JetPack check), run by JetPack 5's Python 3.8 as a device runs it. The whole flow over SSH is
tests/test_fleet_deploy.py (make test-deploy)."""

import json
import subprocess
import tarfile

import pytest

import device_pythons as floors
from cli_output import one_line_error
from resnet_edge.deploy import make_bundle, signing
from resnet_edge.deploy.fleet import verifier_folder


@pytest.fixture(scope="module")
def signed(calibrated_workdir, tmp_path_factory):
    folder = tmp_path_factory.mktemp("dist")
    key, pub = signing.keygen(folder / "ci")[:2]
    first = make_bundle(calibrated_workdir, "jetpack6", folder / "r20-jetpack6.tar.gz", golden=40, sign=key).path
    (folder / "v2").mkdir()
    second = make_bundle(calibrated_workdir, "jetpack6", folder / "v2" / "r20-jetpack6.tar.gz", golden=48,
                         sign=key).path
    return first, second, pub


def test_the_controller_refuses_before_touching_a_host(signed, tmp_path, run_cli, calibrated_workdir):
    first, _, pub = signed
    inventory = tmp_path / "hosts.yml"
    inventory.write_text("all:\n  hosts:\n    edge: {ansible_host: 127.0.0.1, ansible_port: 9}\n")
    one_line_error(run_cli("deploy", first, "-i", tmp_path / "none.yml", "--key", pub), 2, "does not exist")
    one_line_error(run_cli("deploy", first, "-i", inventory), 2, "--key NAME.pub")
    damaged = tmp_path / "bad" / first.name
    damaged.parent.mkdir()
    data = bytearray(first.read_bytes())
    data[len(data) // 2] ^= 0xFF
    damaged.write_bytes(bytes(data))
    one_line_error(run_cli("deploy", damaged, "-i", inventory, "--key", pub), 2, "")
    x86 = make_bundle(calibrated_workdir, "x86-trt10", tmp_path / "r20-x86.tar.gz", golden=40,
                      sign=None).path
    one_line_error(run_cli("deploy", x86, "-i", inventory, "--allow-unsigned"), 2,
                   "deploy ships Jetson bundles")


def release(python, trusted, *args):
    run = subprocess.run([str(python), "-B", str(trusted / "release.py"), *map(str, args)],
                         capture_output=True, text=True)
    return run.returncode, (json.loads(run.stdout.splitlines()[-1]) if run.stdout.strip() else {}), run.stderr


def test_release_py_on_jetpack5s_python(signed, tmp_path):
    python = floors.venv(floors.JETPACK5)
    first, second, pub = signed
    root = tmp_path / "deploy"
    trusted = verifier_folder(root / "trusted", pub)
    key = ["--key", trusted / "key.pub"]
    l4t = tmp_path / "nv_tegra_release"
    l4t.write_text("# R35 (release), REVISION: 4.1, GCID: 1, BOARD: t186ref, EABI: aarch64\n")
    code, said, err = release(python, trusted, "facts", "--root", root, "--target", "jetpack6", "--l4t-file", l4t)
    assert code == 1 and said["jetpack"] == "5" and said["python"].startswith("3.8.")
    assert "the bundle targets jetpack6, and this device is JetPack 5 (L4T R35.4.1)" in err
    names = []
    for archive in (first, second, first):
        code, said, err = release(python, trusted, "extract", "--root", root, "--archive", archive, *key)
        assert code == 0, err
        names.append(said["release"])
        assert (root / "releases" / said["release"] / "r20-jetpack6" / "manifest.json").is_file()
    assert names[0] == names[2] and names[0] != names[1]
    code, said, err = release(python, trusted, "switch", "--root", root, "--release", names[0], "--keep", "2")
    assert code == 0 and said["changed"] and said["previous"] is None
    code, said, err = release(python, trusted, "switch", "--root", root, "--release", names[1], "--keep", "2")
    assert said["current"] == f"releases/{names[1]}" and said["previous"] == f"releases/{names[0]}"
    code, said, err = release(python, trusted, "rollback", "--root", root)
    assert code == 0 and said["current"] == f"releases/{names[0]}"
    assert not list((root / "releases").glob(".incoming-*")) and not list(root.rglob("__pycache__"))
    # a forged archive (another key's signature) is refused before anything is extracted
    attacker = signing.keygen(tmp_path / "attacker")[0]
    forged = tmp_path / "forged" / first.name
    forged.parent.mkdir()
    with tarfile.open(first) as source, tarfile.open(forged, "w:gz") as out:
        for member in source.getmembers():
            data = source.extractfile(member).read() if member.isfile() else None
            if member.name.endswith("/manifest.sig"):
                manifest = source.extractfile(f"{first.name[:-7]}/manifest.json").read()
                data = signing.sign(manifest, attacker)
                member.size = len(data)
            out.addfile(member, __import__("io").BytesIO(data) if data is not None else None)
    before = sorted(p.name for p in (root / "releases").iterdir())
    code, said, err = release(python, trusted, "extract", "--root", root, "--archive", forged, *key)
    assert code == 2 and "signed by another key" in err
    assert sorted(p.name for p in (root / "releases").iterdir()) == before
    # the lock: one owner at a time, given back only by its owner
    assert release(python, trusted, "lock", "--root", root, "--token", "a", "--bundle", "x")[0] == 0
    code, _, err = release(python, trusted, "lock", "--root", root, "--token", "b", "--bundle", "y")
    assert code == 1 and "another deploy (x, since" in err
    release(python, trusted, "unlock", "--root", root, "--token", "b")
    assert (root / ".lock").exists()
    release(python, trusted, "unlock", "--root", root, "--token", "a")
    assert not (root / ".lock").exists()


@pytest.mark.browser
def test_the_fleet_page_in_a_browser_shows_every_device_and_runs_nothing_they_say(tmp_path):
    """A live device, one stopped by a gate, one unreachable, and one whose name and reason carry
    markup: Chromium draws a row for each, with the foreign text as text."""
    import shutil
    from resnet_edge.deploy.fleet import Host, rows, write_page
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("headless Chromium is not installed (make test-browser installs Debian's chromium)")
    out = tmp_path / "deployments"
    live = Host("orin-01", "live", release="r20-jetpack6-0123abcd", facts={"l4t": "R36.4.0", "tensorrt": "10.3.0"},
                built=["fp16"])
    (out / "orin-01" / live.release).mkdir(parents=True)
    (out / "orin-01" / live.release / "verify.json").write_text(json.dumps({"results": [
        {"precision": "fp16", "gates": [{"passed": True}], "latency": {"host_to_host": {"p50_ms": 1.25}}}]}))
    hosts = [live, Host("orin-02", "failed", step="verify", reason="a gate failed: top1_agreement_pct"),
             Host("orin-03", "unreachable", step="connect", reason="Connection refused"),
             Host("<img src=x onerror=alert(1)>", "failed", step="facts", reason="<script>document.title='owned'</script>")]
    page = write_page(rows(hosts, out), "r20-jetpack6.tar.gz", out)
    dom = subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                          f"--user-data-dir={tmp_path / 'profile'}", "--dump-dom", page.as_uri()],
                         check=True, capture_output=True, text=True, timeout=120).stdout
    assert dom.count("<tr class=") == 4 and "1 of 4 devices live" in dom
    assert "pass, p50 1.25 ms" in dom and "verify: a gate failed" in dom and "connect: Connection refused" in dom
    assert "&lt;script&gt;" in dom and "<script>" not in dom and "<img" not in dom
    assert "<title>r20-jetpack6.tar.gz: fleet</title>" in dom  # the script never ran


def test_report_merges_the_verify_json_a_fleet_brought_home(signed, tmp_path, run_cli):
    """`report deployments/*/*/verify.json`: a column per device, a row per backend and
    precision with its gates, agreement and latency, next to parity and bench runs."""
    first, _, pub = signed
    for host in ("orin-01", "orin-02"):
        target = tmp_path / "deployments" / host / "r20-jetpack6-0123abcd" / "verify.json"
        target.parent.mkdir(parents=True)
        result = run_cli("verify", first, "--key", pub, "--precisions", "fp16", "--iterations", "2",
                         "--json", target)
        assert result.exit_code == 0, result.output
    reports = sorted((tmp_path / "deployments").glob("*/*/verify.json"))
    page = tmp_path / "fleet.html"
    result = run_cli("report", *reports, "--html", page, "--json", tmp_path / "fleet.json")
    assert result.exit_code == 0, result.output
    merged = json.loads((tmp_path / "fleet.json").read_text())
    [row] = [r for r in merged["rows"] if r["kind"] == "verify"]
    assert row["precision"] == "fp16" and all(cell.startswith("pass, agreement ") for cell in row["cells"])
    assert [run["report"] for run in merged["runs"]] == [str(p) for p in reports]
    assert "orin-01" in page.read_text() and "orin-02" in page.read_text()
