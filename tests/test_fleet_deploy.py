"""`resnet-edge deploy` against real sshd devices on loopback (tests/fleet_devices.py): JetPack 5
devices on Python 3.8 with numpy 1.17.4 and the TensorRT 8.5 stand-in, JetPack 6 devices on
Python 3.10 with numpy 1.21.5 and the TensorRT 10.3 stand-in, each with its own L4T release
file, reached through Debian's sshd and ansible-core. `make test-deploy` runs them."""

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from fleet_devices import fleet  # noqa: F401  (the fixture)
from resnet_edge.deploy import make_bundle, signing
from resnet_edge.deploy.fleet import PLAYBOOK, UNREACHABLE

pytestmark = [pytest.mark.deploy, pytest.mark.timeout(600)]
CLI = Path(sys.executable).parent / "resnet-edge"


@pytest.fixture(autouse=True)
def in_scratch(tmp_path, monkeypatch):
    """Each deploy runs in a scratch folder: its default --out (deployments/) lands there, never
    in the checkout the tests run from."""
    monkeypatch.chdir(tmp_path)


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    folder = tmp_path_factory.mktemp("keys")
    return {"ci": signing.keygen(folder / "ci")[:2], "attacker": signing.keygen(folder / "attacker")[:2]}


@pytest.fixture(scope="module")
def bundles(trained_digits, calibrated_workdir, keys, tmp_path_factory):
    """Signed bundles: JetPack 5 (a torchscript export), JetPack 6, and a second JetPack 6 release
    (another golden set, so another archive) for rollback and the full disk."""
    from resnet_edge.calibration import calibrate
    from resnet_edge.export import ExportOptions, export_model
    from resnet_edge.zoo import load_model
    model, card = load_model(str(trained_digits.model_path))
    jp5 = tmp_path_factory.mktemp("jp5") / "r20"
    export_model(model, card, jp5, ExportOptions(exporter="torchscript"))
    calibrate(jp5, "digits:train", samples=64, method="minmax", holdout=50)
    folder = tmp_path_factory.mktemp("dist")
    (folder / "v2").mkdir()
    return {"jetpack5": make_bundle(jp5, "jetpack5", folder / "r20-jetpack5.tar.gz", golden=40,
                                    sign=keys["ci"][0]).path,
            "jetpack6": make_bundle(calibrated_workdir, "jetpack6", folder / "r20-jetpack6.tar.gz",
                                    golden=40, sign=keys["ci"][0]).path,
            "jetpack6-v2": make_bundle(calibrated_workdir, "jetpack6", folder / "v2" / "r20-jetpack6.tar.gz",
                                       golden=48, sign=keys["ci"][0]).path}


def deploy(bundle, inventory, *args, out=None):
    command = [str(CLI), "deploy", str(bundle), "-i", str(inventory), "--iterations", "2",
               "--precisions", "fp16", *map(str, args)]
    if out is not None:
        command += ["--out", str(out)]
    return subprocess.run(command, capture_output=True, text=True, timeout=500)


def current(device) -> str | None:
    link = device.root / "current"
    return os.readlink(link) if link.is_symlink() else None


def tree(root: Path) -> list[tuple[str, int]]:
    return sorted((str(p.relative_to(root)), p.lstat().st_size if p.is_file() else 0)
                  for p in root.rglob("*")) if root.exists() else []


def lines(result, host, step):
    return [line for line in result.stdout.splitlines() if f"  {host}  {step}  " in line]


def test_a_first_deploy_goes_live_on_both_jetpacks_and_a_redeploy_builds_nothing(fleet, bundles, keys, tmp_path):
    jp5, jp6 = fleet.start("orin-jp5", "jetpack5"), fleet.start("orin-jp6", "jetpack6")
    inventory = fleet.inventory()
    for family, device in (("jetpack5", jp5), ("jetpack6", jp6)):
        first = deploy(bundles[family], inventory, "--key", keys["ci"][1], "--install-verifier",
                       "--hosts", family, out=tmp_path / "deployments")
        assert first.returncode == 0, first.stdout + first.stderr
        assert lines(first, device.name, "build") and "built in" in lines(first, device.name, "build")[0]
        assert "PASS" in lines(first, device.name, "verify")[0]
        release = current(device)
        assert release and (device.root / release / f"r20-{family}" / "verify.py").is_file()
        home = next((tmp_path / "deployments" / device.name).glob("*/verify.json")).parent
        fetched = json.loads((home / "verify.json").read_text())
        assert fetched["passed"] and fetched["engine_tested"]
        [record] = home.glob("engines/*/model.fp16.json")  # the engine's record, and its build log
        assert json.loads(record.read_text())["tensorrt"] == fetched["device"]["tensorrt"]
        assert "built " in (home / "build-fp16.log").read_text()
        assert fetched["device"]["python"].startswith("3.8." if family == "jetpack5" else "3.10.")
        again = deploy(bundles[family], inventory, "--key", keys["ci"][1], "--hosts", family)
        assert again.returncode == 0, again.stdout + again.stderr
        assert "already there" in lines(again, device.name, "copy")[0]
        assert "already extracted" in lines(again, device.name, "extract")[0]
        assert "fp16: reused" in lines(again, device.name, "build")[0]
        assert current(device) == release


def test_a_wrong_jetpack_and_an_unreachable_host_fail_alone(fleet, bundles, keys):
    jp5, jp6 = fleet.start("xavier", "jetpack5"), fleet.start("orin", "jetpack6")
    from fleet_devices import free_port
    inventory = fleet.inventory(extra_hosts={"gone": {"ansible_host": "127.0.0.1",
                                                      "ansible_port": free_port()}})
    result = deploy(bundles["jetpack6"], inventory, "--key", keys["ci"][1], "--install-verifier")
    assert result.returncode == 1, result.stdout + result.stderr
    refused = lines(result, "xavier", "facts")[0]
    assert "the bundle targets jetpack6, and this device is JetPack 5 (L4T R35.4.1)" in refused
    assert current(jp5) is None and current(jp6) is not None
    assert "unreachable" in lines(result, "gone", "connect")[0]
    only_gone = deploy(bundles["jetpack6"], inventory, "--key", keys["ci"][1], "--hosts", "orin,gone")
    assert only_gone.returncode == UNREACHABLE, only_gone.stdout


def test_an_unknown_host_key_is_refused(fleet, bundles, keys):
    stranger = fleet.start("stranger", "jetpack6", trust=False)
    result = deploy(bundles["jetpack6"], fleet.inventory(), "--key", keys["ci"][1], "--install-verifier")
    assert result.returncode == UNREACHABLE and "Host key verification failed" in result.stdout
    assert not stranger.root.exists()


def test_a_gate_that_fails_on_one_device_leaves_it_on_its_release(fleet, bundles, keys):
    good, bad = fleet.start("good", "jetpack6"), fleet.start("bad", "jetpack6", answers=False)
    inventory = fleet.inventory()
    result = deploy(bundles["jetpack6"], inventory, "--key", keys["ci"][1], "--install-verifier")
    assert result.returncode == 1, result.stdout
    assert "a gate failed" in lines(result, "bad", "verify")[0]
    assert current(good) is not None and current(bad) is None
    home = Path(result.stdout.split("results: ")[1].split("/<host>")[0])
    assert json.loads(next((home / "bad").glob("*/verify.json")).read_text())["passed"] is False


def test_the_device_refuses_a_bundle_its_key_did_not_sign_before_extracting(fleet, bundles, keys, tmp_path):
    """The team's own Ansible runs the playbook as it is, without the controller's check: the
    device's trusted verify.py and key still refuse the forged archive, and nothing is extracted."""
    device = fleet.start("edge", "jetpack6")
    inventory = fleet.inventory()
    setup = deploy(bundles["jetpack6"], inventory, "--key", keys["ci"][1], "--install-verifier")
    assert setup.returncode == 0, setup.stdout
    before = current(device)
    forged = tmp_path / "forged" / "r20-jetpack6.tar.gz"
    forged.parent.mkdir()
    from resnet_edge.deploy import safe_extract
    from resnet_edge.deploy.archive import write_archive
    root = safe_extract(bundles["jetpack6"], tmp_path / "x")
    manifest = (root / "manifest.json").read_bytes()
    write_archive(root, forged, root.name, manifest, signing.sign(manifest, keys["attacker"][0]), 0)
    run = subprocess.run([str(Path(sys.executable).parent / "ansible-playbook"), "-i", str(inventory),
                          str(PLAYBOOK), "-e", f"resnet_edge_bundle={forged}", "-e", "resnet_edge_target=jetpack6"],
                         capture_output=True, text=True, env={**os.environ, "ANSIBLE_HOST_KEY_CHECKING": "True"})
    assert run.returncode != 0 and "signed by another key" in run.stdout, run.stdout[-3000:]
    assert current(device) == before
    assert [p.name for p in (device.root / "releases").iterdir() if not p.name.startswith(".")] == [before.split("/")[1]]


def test_rollback_and_check_mode(fleet, bundles, keys):
    device = fleet.start("edge", "jetpack6")
    inventory = fleet.inventory()
    assert deploy(bundles["jetpack6"], inventory, "--key", keys["ci"][1], "--install-verifier").returncode == 0
    first = current(device)
    before = tree(device.root)
    checked = deploy(bundles["jetpack6-v2"], inventory, "--key", keys["ci"][1], "--check")
    assert checked.returncode == 0 and "would change" in checked.stdout, checked.stdout
    assert tree(device.root) == before  # check mode changed nothing on the device
    second = deploy(bundles["jetpack6-v2"], inventory, "--key", keys["ci"][1])
    assert second.returncode == 0 and current(device) != first, second.stdout
    back = deploy(bundles["jetpack6"], inventory, "--rollback")
    assert back.returncode == 0 and current(device) == first, back.stdout
    assert os.readlink(device.root / "previous") != first


def test_a_full_disk_leaves_the_old_release_current(fleet, bundles, keys, tmp_path):
    root = tmp_path / "small"
    root.mkdir()
    from resnet_edge.deploy import safe_extract
    extracted = safe_extract(bundles["jetpack6"], tmp_path / "measure")
    release = sum(p.stat().st_size for p in extracted.rglob("*") if p.is_file())
    # room for the verifier, one archive and its release and engines, not a second archive
    size = bundles["jetpack6"].stat().st_size + release + (1 << 20)
    if subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(root)]).returncode:
        pytest.skip("needs to mount a small tmpfs (root)")
    try:
        device = fleet.start("full", "jetpack6", root=root / "deploy")
        inventory = fleet.inventory()
        first = deploy(bundles["jetpack6"], inventory, "--key", keys["ci"][1], "--install-verifier")
        assert first.returncode == 0, first.stdout
        release = current(device)
        second = deploy(bundles["jetpack6-v2"], inventory, "--key", keys["ci"][1])
        assert second.returncode == 1 and "No space left on device" in second.stdout, second.stdout
        assert current(device) == release
        assert sorted(p.name for p in (root / "deploy" / "releases").iterdir()) == [release.split("/")[1]]
    finally:
        fleet.stop()
        subprocess.run(["umount", "-l", str(root)])


def test_two_deploys_at_once_never_mix_a_release(fleet, bundles, keys):
    device = fleet.start("edge", "jetpack6")
    inventory = fleet.inventory()
    assert deploy(bundles["jetpack6"], inventory, "--key", keys["ci"][1], "--install-verifier").returncode == 0
    results = {}

    def run(name):
        results[name] = deploy(bundles[name], inventory, "--key", keys["ci"][1])
    threads = [threading.Thread(target=run, args=(name,)) for name in ("jetpack6", "jetpack6-v2")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    said = "".join(r.stdout for r in results.values())
    assert all(r.returncode in (0, 1) for r in results.values()), said
    refused = [r for r in results.values() if r.returncode == 1]
    assert all("another deploy" in r.stdout for r in refused), said
    live = current(device)
    bundle = device.root / live / "r20-jetpack6"
    subprocess.run([str(device.python), "-B", "verify.py", "--key", str(device.root / "trusted" / "key.pub"),
                    "--precisions", "fp16", "--iterations", "1", "--no-build"], cwd=bundle, check=True,
                   capture_output=True)
    assert not (device.root / ".lock").exists()


def test_hostile_inventory_values_reach_no_shell(fleet, bundles, keys, tmp_path):
    """A deploy folder with spaces, quotes and $( ), and a host named to climb out of --out: the
    commands take them as arguments, never a shell line, and the results stay under --out."""
    root = tmp_path / "dev root $(touch PWNED) 'q\" ;x"
    device = fleet.start("edge-1", "jetpack6", root=root)
    hostile = "..'edge\"$(touch PWNED)"
    inventory = fleet.inventory(names={"edge-1": hostile})
    out = tmp_path / "out" / "deployments"
    result = deploy(bundles["jetpack6"], inventory, "--key", keys["ci"][1], "--install-verifier", out=out)
    assert result.returncode == 0, result.stdout + result.stderr
    assert current(device) is not None and (root / "current" / "r20-jetpack6" / "verify.py").is_file()
    assert not (Path.home() / "PWNED").exists() and not list(tmp_path.rglob("PWNED"))
    homes = [p.relative_to(out).parts[0] for p in out.rglob("verify.json")]
    assert homes == ["_.._edge___touch_PWNED_"], homes  # inside --out, whatever the name says
