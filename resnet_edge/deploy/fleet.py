"""`resnet-edge deploy`: one bundle to a fleet of Jetsons through Ansible.

The work on each device is the playbook in deploy/ansible/ (a plain playbook and role a team's
own Ansible runs as it is); this module checks the bundle on the controller first, runs that
playbook with ansible-core's own `ansible-playbook`, turns the task results its callback
writes (deploy/ansible/callback_plugins) into one line per step and host, and sums up each
host: live, or the step that stopped it and why. It calls the bundle and verify code, never
threads through it.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..artifacts import write_json_atomic, write_text_atomic
from ..errors import BadInput, MissingBackend, install_hint
from . import LIB, HERE
from .archive import BundleError, archive_root, created_bound, safe_extract
from .verify_bundle import NEEDS_KEY, Bundle

ANSIBLE = HERE / "ansible"
PLAYBOOK = ANSIBLE / "deploy.yml"
RELEASE_PY = ANSIBLE / "roles" / "resnet_edge" / "files" / "release.py"
INSTALL = install_hint("deploy") + " (ansible-core)"
# exit codes beyond DESIGN's: some host could not be reached (every reachable one went live)
UNREACHABLE = 4
# steps said only when they fail: bookkeeping around the ones that matter
QUIET = ("trusted", "no-verifier", "folders", "lock", "unlock", "fetch", "records", "fetch-records", "done")


@dataclass
class Host:
    name: str
    status: str = "pending"  # live, failed, unreachable, unchanged (check mode), rolled back
    step: str | None = None
    reason: str | None = None
    release: str | None = None
    facts: dict = field(default_factory=dict)
    built: list[str] = field(default_factory=list)
    reused: list[str] = field(default_factory=list)
    seconds: dict = field(default_factory=dict)
    changes: list[str] = field(default_factory=list)
    logs: dict = field(default_factory=dict)  # precision: what build_engine.sh said


def ansible_playbook() -> str:
    """The ansible-playbook of the ansible-core beside this Python (the deploy extra)."""
    beside = Path(sys.executable).parent / "ansible-playbook"
    found = str(beside) if beside.exists() else shutil.which("ansible-playbook")
    if found is None:
        raise MissingBackend(f"deploy runs Ansible, which is not installed; {INSTALL}")
    return found


def check_bundle(bundle: Path, key: Path | None, allow_unsigned: bool, min_created: str | None,
                 precisions: list[str] | None) -> dict:
    """The bundle checked on the controller as a device will check it (every file, the signature
    with `key`, its age): a bundle that cannot pass is refused here, before any host is touched.
    Returns what the playbook needs of it."""
    if not bundle.is_file():
        raise BadInput(f"{bundle} is not a bundle archive; make one with `resnet-edge bundle`")
    if key is None and not allow_unsigned:
        raise BadInput(NEEDS_KEY)
    with tempfile.TemporaryDirectory() as tmp:
        try:
            folder = safe_extract(bundle, tmp)
            checked = Bundle(folder, key, allow_unsigned=allow_unsigned,
                             min_created=created_bound(min_created) if min_created else None)
        except BundleError as exc:
            raise (MissingBackend if exc.code == 3 else BadInput)(str(exc)) from None
    info = checked.info
    if not info.get("target", "").startswith("jetpack"):
        raise BadInput(f"{bundle.name} targets {info.get('target')}; deploy ships Jetson bundles "
                       "(--target jetpack5 or jetpack6)")
    unknown = sorted(set(precisions or []) - set(info["precisions"]))
    if unknown:
        raise BadInput(f"{bundle.name} has no {unknown[0]} model; it has {', '.join(info['precisions'])}")
    if archive_root(bundle).name != folder.name:
        raise BadInput(f"{bundle.name} holds {folder.name}/; deploy it under its own name "
                       f"({folder.name}.tar.gz)")
    return {"target": info["target"], "precisions": precisions or info["precisions"]}


def verifier_folder(into: Path, key: Path | None) -> Path:
    """What --install-verifier puts on each device, from this package (never from the bundle):
    verify.py, its lib/, release.py and the public key."""
    (into / "lib").mkdir(parents=True)
    shutil.copy2(HERE / "verify_bundle.py", into / "verify.py")
    shutil.copy2(RELEASE_PY, into / "release.py")
    for name, source in LIB.items():
        shutil.copy2(source, into / "lib" / name)
    if key is not None:
        shutil.copy2(key, into / "key.pub")
    return into


def step_of(task: str) -> str | None:
    """The step a task is ("resnet_edge : resnet-edge copy" is copy), or None for Ansible's own."""
    found = re.search(r"(?:^|: )resnet-edge ([a-z-]+)$", task)
    return found[1] if found else None


def reason_of(event: dict) -> str:
    """The one line that says why a step failed: our scripts' `error:` line, else Ansible's."""
    text = "\n".join(str(event.get(k) or "") for k in ("stderr", "msg", "stdout"))
    errors = [line[len("error: "):] for line in text.splitlines() if line.startswith("error: ")]
    if errors:
        return errors[-1]
    if "verify" == step_of(event.get("task", "")) and event.get("rc") == 1:
        fails = [line for line in str(event.get("stdout", "")).splitlines() if ": FAIL" in line]
        return "a gate failed: " + (fails[0] if fails else "see verify.json")
    for key in ("stderr", "msg", "stdout"):  # the last thing the step said
        lines = [line.strip() for line in str(event.get(key) or "").splitlines() if line.strip()]
        if lines and lines[-1] != "non-zero return code":
            return lines[-1][:300]
    return f"{event.get('status')} (exit {event.get('rc')})"


class Run:
    """The hosts' state, updated from each event as it arrives, and the line it prints."""

    def __init__(self, say):
        self.hosts: dict[str, Host] = {}
        self.say = say

    def event(self, event: dict) -> None:
        step = step_of(event.get("task", ""))
        host = self.hosts.setdefault(event["host"], Host(event["host"]))
        status = event["status"]
        if step is None and status in ("failed", "unreachable"):  # Ansible's own (gathering facts)
            step = "connect"
        if step is None or status == "skipped":
            return
        if step in QUIET and status not in ("failed", "unreachable"):
            return
        host.seconds[step] = host.seconds.get(step, 0.0) + float(event.get("seconds") or 0)
        detail = ""
        stdout = str(event.get("stdout") or "")
        if status == "unreachable":
            host.status, host.step, host.reason = "unreachable", step, reason_of(event)
            detail = host.reason
        elif status == "failed":
            if host.status not in ("failed", "unreachable"):  # the first failure is the reason
                host.status, host.step, host.reason = "failed", step, reason_of(event)
            detail = reason_of(event)
            if step == "build":
                host.logs[str(event.get("item"))] = f"{stdout}\n{event.get('stderr') or ''}".strip() + "\n"
        elif step == "facts":
            host.facts = _json_line(stdout)
            detail = (f"L4T {host.facts.get('l4t') or '-'}, TensorRT {host.facts.get('tensorrt') or '-'}, "
                      f"Python {host.facts.get('python')}, {int(host.facts.get('free_bytes', 0)) >> 20} MiB free")
        elif step == "copy":
            size, seconds = int(event.get("size") or 0) / 1e6, float(event.get("seconds") or 0)
            detail = (f"{size:.1f} MB in {seconds:.1f} s ({size / max(seconds, 1e-3):.1f} MB/s)"
                      if status == "changed" else "already there")
        elif step == "check":
            said = _json_line(stdout)
            host.release = said.get("release", host.release)
            detail = (f"signature valid, key {said.get('key_id')}" if said.get("signed")
                      else "files match manifest.json (unsigned)")
        elif step == "extract":
            said = _json_line(stdout)
            host.release = said.get("release", host.release)
            detail = f"releases/{said.get('release')}" + ("" if said.get("changed", True)
                                                           else " (already extracted)")
        elif step == "build":
            item = event.get("item")
            host.logs[str(item)] = f"{stdout}\n{event.get('stderr') or ''}".strip() + "\n"
            (host.reused if stdout.startswith("reused ") else host.built).append(str(item))
            detail = f"{item}: " + ("reused" if stdout.startswith("reused ") else
                                    f"built in {float(event.get('seconds') or 0):.1f} s")
        elif step == "verify":
            detail = (stdout.strip().splitlines() or [""])[-1]
        elif step == "switch":
            said = _json_line(stdout)
            host.status = "live"
            detail = f"current -> {said.get('current')}" + (f", pruned {', '.join(said['pruned'])}"
                                                            if said.get("pruned") else "")
        elif step == "rollback":
            said = _json_line(stdout)
            host.status = "rolled back"
            detail = f"current -> {said.get('current')}"
        if status in ("changed",) and step in ("copy", "extract", "switch", "install-verifier"):
            host.changes.append(step)
        self.say(host.name, step, status, detail)


def _json_line(text: str) -> dict:
    for line in reversed(text.splitlines()):
        try:
            value = json.loads(line)
        except ValueError:
            continue
        if isinstance(value, dict):
            return value
    return {}


def deploy(bundle: str | Path, inventory: str | Path, *, key: str | Path | None = None,
           limit: str | None = None, min_created: str | None = None,
           precisions: list[str] | None = None, forks: int = 5, check: bool = False,
           rollback: bool = False, install_verifier: bool = False, allow_unsigned: bool = False,
           out: str | Path = "deployments", keep: int = 3, iterations: int = 20,
           verbose: bool = False, say=lambda host, step, status, detail: None) -> dict:
    """Run the playbook over `inventory` and return {"hosts": {name: Host}, "exit_code": ...}.
    `say(host, step, status, detail)` hears each step of each host as it finishes."""
    bundle, inventory = Path(bundle), Path(inventory)
    key = Path(key) if key else None
    if not inventory.is_file():
        raise BadInput(f"inventory {inventory} does not exist; give an Ansible inventory (hosts.yml)")
    if forks < 1:
        raise BadInput(f"--forks must be at least 1, got {forks}")
    if iterations < 1:
        raise BadInput(f"--iterations must be at least 1, got {iterations}")
    if key is not None and not key.is_file():
        raise BadInput(f"key {key} does not exist; give the signer's NAME.pub")
    if install_verifier and key is None and not allow_unsigned:
        raise BadInput("--install-verifier puts the public key on each device: give --key NAME.pub")
    facts = {"target": "", "precisions": []}
    if not rollback:  # refused here, before any host is touched
        facts = check_bundle(bundle, key, allow_unsigned, min_created, precisions)
    playbook = ansible_playbook()
    out = Path(out).resolve()
    with tempfile.TemporaryDirectory(prefix="resnet-edge-deploy-") as tmp:
        tmp = Path(tmp)
        variables = {
            "resnet_edge_bundle": str(bundle.resolve()), "resnet_edge_target": facts["target"],
            "resnet_edge_precisions": ",".join(facts["precisions"]),
            "resnet_edge_min_created": min_created or "", "resnet_edge_allow_unsigned": allow_unsigned,
            "resnet_edge_rollback": rollback, "resnet_edge_install_verifier": install_verifier,
            "resnet_edge_verifier": str(verifier_folder(tmp / "verifier", key)) if install_verifier else "",
            "resnet_edge_fetch": str(out), "resnet_edge_keep": keep, "resnet_edge_iterations": iterations,
            "resnet_edge_token": secrets.token_hex(8)}
        (tmp / "vars.json").write_text(json.dumps(variables))
        events = tmp / "events.jsonl"
        events.touch()
        command = [playbook, "-i", str(inventory), str(PLAYBOOK), "-e", f"@{tmp / 'vars.json'}",
                   "--forks", str(forks)]
        if limit:
            command += ["--limit", limit]
        if check:
            command += ["--check", "--diff"]
        env = {**os.environ, "RESNET_EDGE_EVENTS": str(events),
               "ANSIBLE_CALLBACK_PLUGINS": str(ANSIBLE / "callback_plugins"),
               "ANSIBLE_CALLBACKS_ENABLED": "resnet_edge_events",
               "ANSIBLE_HOST_KEY_CHECKING": "True",  # whatever a user's ansible.cfg says
               "ANSIBLE_RETRY_FILES_ENABLED": "False", "ANSIBLE_NOCOLOR": "1",
               "ANSIBLE_LOCAL_TEMP": str(tmp / "ansible-local")}
        run = Run(say)
        process = subprocess.Popen(command, env=env, stdout=None if verbose else subprocess.PIPE,
                                   stderr=None if verbose else subprocess.STDOUT, text=True)
        tail = []
        if not verbose:  # Ansible's own output, kept for the error it may say
            reader = threading.Thread(target=lambda: tail.extend(process.stdout), daemon=True)
            reader.start()
        with open(events, "rb") as stream:  # read as the callback appends, each line once
            while True:
                finished = process.poll() is not None
                for line in iter(stream.readline, b""):
                    if not line.endswith(b"\n"):  # caught mid-write: read it whole next time
                        stream.seek(-len(line), os.SEEK_CUR)
                        break
                    run.event(json.loads(line))
                if finished:
                    break
                time.sleep(0.2)
        if not verbose:
            reader.join(timeout=5)
    hosts = run.hosts
    if not hosts and process.returncode:
        said = [line.strip() for line in tail if line.strip()]
        raise BadInput("ansible-playbook stopped before any host: "
                       + re.sub(r"\s+", " ", said[-1] if said else f"exit {process.returncode}")[:400])
    for host in hosts.values():
        if host.status == "pending" and check:
            host.status = "would change" if host.changes else "unchanged"
    for host in hosts.values():  # the build logs, beside what the device sent home
        for precision, log in host.logs.items():
            if host.release:
                folder = out / host_folder(host.name) / host.release
                folder.mkdir(parents=True, exist_ok=True)
                write_text_atomic(folder / f"build-{re.sub(r'[^a-z0-9]', '_', precision)}.log", log)
    table = rows(sorted(hosts.values(), key=lambda host: host.name), out)
    page = write_page(table, bundle.name, out) if hosts else None
    return {"hosts": hosts, "rows": table, "page": page, "exit_code": exit_code(hosts.values()), "out": out}


def host_folder(name: str) -> str:
    """The folder a host's results come home to: its inventory name with anything but letters,
    digits and . _ - replaced (the playbook's fetch applies the same rule), so no host name
    reaches outside --out."""
    folder = re.sub(r"[^A-Za-z0-9._-]", "_", name)
    return "_" + folder if folder.startswith(".") else folder


def fetched(out: Path, host: Host) -> dict | None:
    """The verify.json this host's deploy brought home, or None."""
    if host.release is None:
        return None
    path = out / host_folder(host.name) / host.release / "verify.json"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def rows(hosts, out: Path) -> list[dict]:
    """One row per device: where it stands, what it runs, and what its own verify.py measured."""
    table = []
    for host in hosts:
        report = fetched(out, host) or {}
        results = {r.get("precision"): r for r in report.get("results", []) if isinstance(r, dict)}
        table.append({
            "host": host.name, "status": host.status, "release": host.release,
            "l4t": host.facts.get("l4t"), "tensorrt": host.facts.get("tensorrt"),
            "python": host.facts.get("python"), "built": host.built, "reused": host.reused,
            "build_s": round(host.seconds.get("build", 0.0), 1), "step": host.step, "reason": host.reason,
            "precisions": {p: {"passed": not [g for g in r.get("gates", []) if g.get("passed") is False],
                               "p50_ms": r.get("latency", {}).get("host_to_host", {}).get("p50_ms"),
                               "backend": r.get("backend")} for p, r in results.items()}})
    return table


def write_page(table: list[dict], bundle: str, out: Path) -> Path:
    """fleet.json and fleet.html in `out`: every value from a device escaped, never markup."""
    from html import escape

    from ..parity.html import STYLE
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / "fleet.json", {"bundle": bundle, "hosts": table})
    precisions = sorted({p for row in table for p in row["precisions"]})
    head = "".join(f"<th>{escape(h)}</th>" for h in ["host", "status", "release", "L4T", "TensorRT",
                                                     "built", "build s", *precisions, "stopped at"])
    body = []
    for row in table:
        cells = [row["host"], row["status"], row["release"] or "-", row["l4t"] or "-",
                 row["tensorrt"] or "-", ", ".join(row["built"]) or ("reused" if row["reused"] else "-"),
                 str(row["build_s"])]
        for precision in precisions:
            got = row["precisions"].get(precision)
            cells.append("-" if got is None else
                         f"{'pass' if got['passed'] else 'FAIL'}, p50 {got['p50_ms']:.2f} ms")
        cells.append(f"{row['step']}: {row['reason']}" if row["status"] not in ("live",) and row["step"]
                     else "-")
        klass = "ok" if row["status"] == "live" else "bad"
        body.append(f"<tr class='{klass}'>" + "".join(f"<td>{escape(str(c))}</td>" for c in cells) + "</tr>")
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>{escape(bundle)}: fleet</title>"
            f"<style>{STYLE} tr.bad td {{ background: #fff0f0; }}</style></head><body>"
            f"<h1>{escape(bundle)}</h1><p>{sum(r['status'] == 'live' for r in table)} of {len(table)} "
            f"devices live</p><table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody>"
            "</table></body></html>\n")
    write_text_atomic(out / "fleet.html", page)
    return out / "fleet.html"


def exit_code(hosts) -> int:
    """0 every host live (or rolled back, or checked); 1 a host failed a step on the device;
    UNREACHABLE when the only trouble was hosts that could not be reached."""
    statuses = {host.status for host in hosts}
    if statuses & {"failed", "pending"}:
        return 1
    if "unreachable" in statuses:
        return UNREACHABLE
    return 0
