"""Shipping commands: `build` (a TensorRT engine here), `keygen`, `bundle` (what a device needs),
`verify` (a bundle, anywhere)."""

from __future__ import annotations

import time
from pathlib import Path

import click
from rich.markup import escape
from rich.table import Table

from .. import console
from ..console import emit_json, stdout, warn, wrote
from ..errors import BadInput, GateFailed, MissingBackend
from ..parity.gates import failed_gates
from .common import (DEFAULT_DATA, JSON_OPTION, TARGET_NAMES, Finite, TARGETS_HELP, cli, csv_list,
                     data_paths, resolve_workdir, writable)


@cli.command()
@click.argument("workdir", type=click.Path(path_type=Path), callback=resolve_workdir)
@click.option("--precision", type=click.Choice(["fp32", "tf32", "fp16", "int8"]), default="fp16", show_default=True,
              help="The engine's precision (tf32: fp32 with TensorRT's TF32 math, compute capability 8.0+); the ONNX file and flags follow from it and the TensorRT here.")
@click.option("--workspace", type=int, default=2048, show_default=True, help="Workspace limit, MiB.")
@click.option("--timing-cache", type=click.Path(path_type=Path),
              help="TensorRT's timing cache to load and update [timing.cache beside the engine, "
              "so one per GPU and TensorRT version]; a cache from another GPU or TensorRT is "
              "replaced with a warning.")
@click.option("--no-timing-cache", is_flag=True, help="Build without a timing cache.")
@click.option("--dla-core", type=int, help="Build for this DLA core (Jetson, TensorRT 8.5-10.7); "
              "fp16/int8, one static batch size, int8 from calibration.cache.")
@click.option("--gpu-fallback", is_flag=True, help="With --dla-core: layers DLA cannot run go to the GPU.")
@click.option("--version-compatible", is_flag=True,
              help="Engine loads on later TensorRT of the same major (TensorRT 8.6+).")
@click.option("--hardware-compatible", is_flag=True,
              help="Engine runs on any Ampere or newer GPU (TensorRT 8.6+, compute capability 8.0+).")
@click.option("--int8-source", type=click.Choice(["auto", "qdq", "cache"]), default="auto", show_default=True,
              help="int8 from the Q/DQ model, or implicitly from calibration.cache (TensorRT <= 10); "
              "auto: cache for DLA, Q/DQ otherwise.")
@click.option("--typing", type=click.Choice(["auto", "weak", "strong"]), default="auto", show_default=True,
              help="auto: builder flags before TensorRT 10.12, strongly typed from 10.12 (always on 11).")
@click.option("--int8-float", type=click.Choice(["auto", "fp16", "fp32"]), default="auto", show_default=True,
              help="Strongly typed int8: float parts in fp16 (model.int8-fp16.onnx, auto) or fp32 "
              "(model.int8.onnx).")
@JSON_OPTION
def build(workdir, precision, workspace, timing_cache, no_timing_cache, dla_core, gpu_fallback,
          version_compatible, hardware_compatible, int8_source, typing, int8_float, json_path) -> None:
    """Build a TensorRT engine into engines/<gpu>-trt<version>/model.<precision>.engine.

    The engine's batch profile is the one the model was exported with (export --batch, or
    --min-batch/--opt-batch/--max-batch); a DLA engine takes its one opt batch size.

    Which ONNX file and which flags are used depends on the TensorRT version found here:
    8.5/8.6 use builder flags (FP16/INT8), 11.x is strongly typed (fp16 from model.fp16.onnx,
    int8 from model.int8-fp16.onnx), 10.x does either. fp32 engines are built without TF32.
    A JSON beside the engine records the TensorRT version, GPU, compute capability, ONNX
    sha256 and options. Exit 2 for options this TensorRT or GPU cannot honour, 3 without
    TensorRT, a GPU or a matching cuda-python.

    \b
    Examples:
      resnet-edge build artifacts/resnet50 --precision fp16
      resnet-edge build artifacts/resnet50 --precision int8 --timing-cache ~/.cache/resnet-edge/orin.cache
      resnet-edge build artifacts/resnet50 --precision int8 --dla-core 0 --gpu-fallback     # Jetson
    """
    from ..artifacts import WorkDir
    from ..calibration import INT8_NAME
    from ..export.metadata import opset_of, quantization_info
    from ..export import export_profile
    from ..runtime import trt_engine, trt_plan, trt_rules, trt_runner
    from ..backends import remake_command

    if workspace < 1:
        raise BadInput(f"--workspace must be at least 1 MiB, got {workspace}")
    if gpu_fallback and dla_core is None:
        raise BadInput("--gpu-fallback goes with --dla-core")
    if timing_cache and no_timing_cache:
        raise BadInput("--timing-cache and --no-timing-cache contradict each other; drop one")
    if not (workdir / "model.onnx").exists():
        raise BadInput(f"{workdir} has no model.onnx; run `resnet-edge export ... --out {workdir}` first")
    writable(json_path, (timing_cache,), (workdir,))
    options = dict(int8_source=int8_source, typing=typing, dla=dla_core is not None,
                   version_compatible=version_compatible, hardware_compatible=hardware_compatible,
                   int8_float=int8_float)
    try:
        trt = trt_runner.import_trt()
        plan = trt_plan.build_plan(trt.__version__, precision, **options)
    except ValueError as exc:
        raise BadInput(str(exc)) from None
    except trt_rules.EngineError as exc:
        raise MissingBackend(str(exc)) from None
    wd = WorkDir(workdir)
    for name in (plan.onnx_file, *([trt_rules.CACHE_FILE] if plan.calibration_cache else [])):
        if wd.file(name).exists():  # a stale or half-written input is refused before building
            wd.vouch(name, remake_command(workdir, name))
    int8_file = workdir / INT8_NAME
    if (plan.onnx_file == INT8_NAME and int8_file.exists()
            and quantization_info(int8_file).get("recipe") == "cpu"):
        raise BadInput(f"{int8_file} was calibrated with --recipe cpu (uint8, asymmetric), "
                       f"which TensorRT cannot build; run `resnet-edge calibrate {workdir} --recipe "
                       "tensorrt` (or build with --int8-source cache)")
    if (workdir / plan.onnx_file).exists():
        problem = trt_rules.opset_problem(plan.onnx_file, opset_of(workdir / plan.onnx_file),
                                           trt.__version__)
        if problem:
            raise BadInput(problem)
    del options["dla"]
    profile = export_profile(workdir)
    with console.steps() as step:
        step(f"building the {precision} engine with TensorRT {trt.__version__}")
        try:
            engine = trt_engine.build_engine(
                workdir, precision, max_batch=profile["max"], opt_batch=profile["opt"],
                min_batch=profile["min"], workspace_mib=workspace,
                timing_cache=None if no_timing_cache else (str(timing_cache) if timing_cache else "auto"),
                dla_core=dla_core, gpu_fallback=gpu_fallback, warn=warn, **options)
        except ValueError as exc:
            raise BadInput(str(exc)) from None
        except trt_rules.EngineError as exc:
            raise MissingBackend(str(exc)) from None
    meta = trt_rules.read_engine_meta(engine)
    stdout.print(f"built in {meta['build_seconds']:.1f} s for {meta['gpu']} (sm "
                 f"{meta['compute_capability']}), TensorRT {meta['tensorrt']}, from {meta['onnx']}")
    wrote(engine, engine.with_suffix(trt_rules.ENGINE_JSON_SUFFIX), meta.get("timing_cache"))
    emit_json(meta, json_path)


@cli.command()
@click.option("--out", "out", required=True, type=click.Path(path_type=Path, file_okay=False),
              help="Directory for NAME.key (private, mode 0600) and NAME.pub.")
@click.option("--name", default="signing", show_default=True, help="File name of the key pair.")
@click.option("--force", is_flag=True, help="Replace an existing key pair.")
def keygen(out, name, force) -> None:
    """Make an Ed25519 key pair for signing bundles.

    Keep NAME.key secret (a CI secret); give NAME.pub to whoever verifies. A public key is never
    taken from inside a bundle.

    \b
    Example:
      resnet-edge keygen --out keys --name ci && resnet-edge bundle artifacts/r50 --sign keys/ci.key
    """
    from ..deploy import signing
    try:
        if not name or name != Path(name).name or name.startswith("."):
            raise BadInput(f"--name takes a plain file name, got {name!r}")
        from ..artifacts import ensure_writable_dir
        private, public, key_id = signing.keygen(ensure_writable_dir(out) / name, force=force)
    except signing.SignatureError as exc:
        raise (MissingBackend if exc.code == 3 else BadInput)(str(exc)) from None
    stdout.print(f"key id {key_id}; {private} is private (mode 0600)")
    wrote(private, public)


@cli.command()
@click.argument("workdir", type=click.Path(path_type=Path), callback=resolve_workdir)
@click.option("--target", type=click.Choice(TARGET_NAMES),
              default="jetpack6", show_default=True, help=TARGETS_HELP)
@click.option("--out", type=click.Path(path_type=Path, file_okay=False),
              help="Directory for <workdir name>-<target>.tar.gz [the work directory].")
@click.option("--data", "data_spec",
              help="Where the golden inputs come from (labelled, preprocessed by the model card) "
              + DEFAULT_DATA["test"])
@click.option("--golden", type=int, default=100, show_default=True, help="Golden images.")
@click.option("--thresholds", type=click.Path(path_type=Path, exists=True, dir_okay=False),
              help="TOML gates carried in the bundle [parity defaults].")
@click.option("--sign", type=click.Path(path_type=Path, exists=True, dir_okay=False),
              help="Ed25519 private key (NAME.key from `resnet-edge keygen`) to sign manifest.json.")
@click.option("--triton-accelerator", type=click.Choice(["none", "fp16", "int8"]), default="none",
              show_default=True, help="With --target triton: run the ONNX model through ONNX "
              "Runtime's TensorRT execution accelerator in fp16 or int8 (the int8 Q/DQ model).")
@click.option("--classifier-threshold", type=Finite(), default=0.0, show_default=True,
              help="With --target deepstream: nvinfer attaches a label only when its probability "
              "is above this (0 labels every frame with its top-1 class).")
@click.option("--release", help="A release name (e.g. v9) signed with the bundle's name, target "
              "and time; verify shows it.")
@JSON_OPTION
def bundle(workdir, target, out, data_spec, golden, thresholds, sign, triton_accelerator,
           classifier_threshold, release, json_path) -> None:
    """Pack a device bundle: ONNX files, calibration cache, golden I/O, gates, build and verify
    scripts, and manifest.json with the sha256 of every file (signed with --sign).

    \b
    Then on the Jetson, with JetPack's Python and TensorRT:
      tar xf resnet50-jetpack6.tar.gz && cd resnet50-jetpack6 && ./build_engine.sh int8
      python3 verify.py --key ci.pub   # or RESNET_EDGE_VERIFY_KEY=ci.pub, set once on the device

    \b
    Examples:
      resnet-edge bundle artifacts/resnet50 --target jetpack6 --out dist/
      resnet-edge bundle artifacts/resnet50 --sign keys/ci.key      # verify with --key keys/ci.pub
      resnet-edge bundle artifacts/resnet50 --target triton --triton-accelerator fp16
      resnet-edge export resnet50 --fold-normalization --softmax --out artifacts/resnet50-ds
      resnet-edge bundle artifacts/resnet50-ds --target deepstream --classifier-threshold 0.5
    """
    from ..deploy import make_bundle
    from ..parity.gates import load_thresholds

    path = (out or workdir) / f"{workdir.name}-{target}.tar.gz"
    writable(json_path, (thresholds, sign, *data_paths(data_spec)), (workdir,), (path,))
    with console.steps() as step:
        result = make_bundle(workdir, target, path, eval_spec=data_spec, golden=golden,
                             thresholds=load_thresholds(thresholds), sign=sign,
                             accelerator=triton_accelerator,
                             classifier_threshold=classifier_threshold, release=release,
                             step=step)
    for message in result.notes:
        warn(message)
    signed = f"signed by key {result.key_id}" if result.key_id else "unsigned"
    stdout.print(f"bundle for {target}: {', '.join(result.precisions)}; {signed}")
    stdout.print(f"manifest.json sha256 {result.manifest_sha256}")
    wrote(result.path)
    emit_json({"path": str(result.path), "target": target, "precisions": result.precisions,
               "manifest_sha256": result.manifest_sha256, "key_id": result.key_id,
               "notes": result.notes}, json_path)


@cli.command()
@click.argument("bundle_path", metavar="BUNDLE", type=click.Path(path_type=Path, exists=True))
@click.option("--key", type=click.Path(path_type=Path, exists=True, dir_okay=False),
              envvar="RESNET_EDGE_VERIFY_KEY", show_envvar=True,
              help="The signer's public key (NAME.pub): refuse a bundle it did not sign. Needed "
              "unless --allow-unsigned.")
@click.option("--allow-unsigned", is_flag=True,
              help="Without a key, check the files against manifest.json only: nothing is "
              "authenticated (for demos).")
@click.option("--min-created", metavar="DATE",
              help="Refuse a bundle made before DATE (YYYY-MM-DD or YYYY-MM-DDTHH:MM:SSZ): no "
              "older bundle replayed.")
@click.option("--precisions", help="Comma list of fp32, fp16, int8 [every precision in the bundle].")
@click.option("--backend", type=click.Choice(["auto", "trt", "ort"]), default="auto", show_default=True,
              help="trt (TensorRT engines), ort (ONNX Runtime on the ONNX files), or auto: trt "
              "where TensorRT is, else ort.")
@click.option("--require-tensorrt", is_flag=True, help="Exit 3 instead of falling back to ONNX Runtime.")
@click.option("--iterations", type=int,
              help="Timed iterations per precision [100 with TensorRT; 10 on ONNX Runtime off the "
              "device, whose latency says little about the device's].")
@click.option("--device-dir", type=click.Path(path_type=Path),
              help="Where engines are built and looked for [<bundle>.device beside a folder; a "
              "temporary folder for an archive].")
@JSON_OPTION
def verify(bundle_path, key, allow_unsigned, min_created, precisions, backend, require_tensorrt,
           iterations, device_dir, json_path) -> None:
    """Check a bundle from anywhere: safe extraction, the signature and the bundle's signed
    name, target, release and time, every file against manifest.json, golden inputs through
    TensorRT (or ONNX Runtime where TensorRT is absent), the parity gates, latency.

    \b
    Examples:
      resnet-edge verify resnet50-jetpack6.tar.gz --key keys/ci.pub
      resnet-edge verify resnet50-jetpack6.tar.gz --key keys/ci.pub --min-created 2026-11-01
      resnet-edge verify resnet50-jetpack6.tar.gz --allow-unsigned   # a demo: nothing authenticated
    """
    from ..deploy.check import verify_path
    from ..deploy.verify_bundle import integrity_lines, verdict_line

    writable(json_path, (bundle_path, key),
             (device_dir or (Path(f"{bundle_path}.device") if bundle_path.is_dir() else None),))
    with console.steps() as step:
        report = verify_path(bundle_path, key=key, allow_unsigned=allow_unsigned,
                             min_created=min_created, precisions=csv_list(precisions) if precisions else None,
                             backend=backend, iterations=iterations, device_dir=device_dir,
                             require_tensorrt=require_tensorrt, step=step)
    table = Table(title=f"{escape(report['bundle']['arch'])} bundle for {escape(report['bundle']['about'])}: "
                        f"{report['golden_images']} golden images")
    for col in ("backend", "max abs", "top-1 agree", "near-ties", "top-1", "p50 ms", "gates"):
        table.add_column(col, justify="left" if col in ("backend", "gates") else "right")
    from ..parity.gates import describe
    details = []
    for row in report["results"]:
        bad = [g for g in row["gates"] if g["passed"] is False]
        # the table names the failed gates; what each measured goes below it, a line each (the
        # whole text in the cell made a 330-column table)
        details += [f"{row['backend']}: {describe(g)}" for g in bad]
        table.add_row(row["backend"], f"{row['metrics']['max_abs']:.2e}",
                      _decisive(row["metrics"]["decisive"]),
                      str(row["metrics"]["decisive"]["near_ties"]),
                      f"{row['accuracy']['top1']:.2%}" if row["accuracy"] else "-",
                      f"{row['latency']['host_to_host']['p50_ms']:.2f}",
                      "[red]FAIL: " + escape(", ".join(g["gate"] for g in bad)) + "[/]" if bad else "[green]pass[/]")
    stdout.print(table)
    for line in details:
        stdout.print(f"[red]failed[/] {escape(line)}")
    for line in integrity_lines(report):
        if line.startswith("warning: "):
            warn(line.removeprefix("warning: "))
        else:
            stdout.print(escape(line))
    stdout.print(verdict_line(report))
    emit_json(report, json_path)
    if report["failed_gates"]:
        raise GateFailed(f"bundle gates failed: {failed_gates([dict(r, backend=r['backend'].split()[0]) for r in report['results']])}")


def _decisive(decisive: dict) -> str:
    """Agreement on the images a correct model cannot flip, with what that shows at least."""
    return f"{decisive['agree']}/{decisive['images']} (>= {decisive['lower_bound']:.1%})"


@cli.command()
@click.argument("bundle_path", metavar="BUNDLE", type=click.Path(path_type=Path))
@click.option("--inventory", "-i", type=click.Path(path_type=Path), required=True,
              help="Ansible inventory of the devices (hosts.yml; groups such as jetpack5 and jetpack6).")
@click.option("--hosts", "limit", metavar="PATTERN", help="Only these hosts or groups (an Ansible pattern, as ansible-playbook --limit takes).")
@click.option("--key", type=click.Path(path_type=Path, dir_okay=False), envvar="RESNET_EDGE_VERIFY_KEY",
              show_envvar=True, help="The signer's public key (NAME.pub): the bundle is checked with it "
              "here, and --install-verifier puts it on each device, whose verify.py checks with it.")
@click.option("--allow-unsigned", is_flag=True, help="Deploy an unsigned bundle (nothing authenticated).")
@click.option("--min-created", metavar="DATE", help="Each device refuses a bundle made before DATE.")
@click.option("--precisions", help="Comma list to build and verify on each device [every precision in the bundle].")
@click.option("--forks", type=click.IntRange(1, 500), default=5, show_default=True,
              help="Devices worked on at once.")
@click.option("--check", is_flag=True, help="Say what would change on each host, changing nothing "
              "(Ansible's check mode).")
@click.option("--rollback", is_flag=True, help="Switch each host back to its previous release.")
@click.option("--install-verifier", is_flag=True, help="First put this package's verify.py, its lib/ "
              "and --key on each device (trusted/): never the copy inside the bundle being checked.")
@click.option("--keep", type=click.IntRange(2, 100), default=3, show_default=True,
              help="Releases kept on each device (current and previous among them).")
@click.option("--iterations", type=int, default=20, show_default=True,
              help="Timed iterations per precision in each device's verify.py.")
@click.option("--out", type=click.Path(path_type=Path),
              help="Where each device's verify.json comes home: OUT/<host>/<bundle>-<sha8>/, and "
              "fleet.html [deployments].")
@click.option("--verbose", "-v", "ansible_output", is_flag=True, help="Show Ansible's own output too.")
@JSON_OPTION
def deploy(bundle_path, inventory, limit, key, allow_unsigned, min_created, precisions, forks, check,
           rollback, install_verifier, keep, iterations, out, ansible_output, json_path) -> None:
    """Ship a Jetson bundle to a fleet over SSH with Ansible: on each device check it with the
    device's trusted verify.py and key, extract it, build its engines, verify them, and only
    then switch `current` to it (the previous release kept for --rollback). One failing host
    never stops the others.

    The work is a plain playbook and role (resnet_edge/deploy/ansible/) that a team's own
    Ansible can run; this command checks the bundle here first and prints a line per step and
    host, then a table.

    \b
    Exit codes: 0 every host live; 1 a host failed a step (a gate, a refusal, a build);
    2 bad usage, or a bundle refused here; 3 Ansible missing; 4 only unreachable hosts failed.

    \b
    Examples:
      resnet-edge deploy dist/resnet50-jetpack6.tar.gz -i hosts.yml --key keys/ci.pub --install-verifier
      resnet-edge deploy dist/resnet50-jetpack6.tar.gz -i hosts.yml --key keys/ci.pub --hosts jetpack6 --forks 20
      resnet-edge deploy dist/resnet50-jetpack6.tar.gz -i hosts.yml --key keys/ci.pub --check
      resnet-edge deploy dist/resnet50-jetpack6.tar.gz -i hosts.yml --rollback
    """
    from ..deploy import fleet

    writable(json_path, (bundle_path, inventory, key))
    started = time.monotonic()

    def say(host, step, status, detail):
        colour = {"failed": "red", "unreachable": "red", "changed": "yellow"}.get(status, "green")
        stdout.print(f"{time.monotonic() - started:7.1f} s  {escape(host)}  {step}  "
                     f"[{colour}]{status}[/]  {escape(detail)}")
    result = fleet.deploy(bundle_path, inventory, key=key, limit=limit, min_created=min_created,
                          precisions=csv_list(precisions) if precisions else None, forks=forks,
                          check=check, rollback=rollback, install_verifier=install_verifier,
                          allow_unsigned=allow_unsigned, out=out or Path("deployments"), keep=keep,
                          iterations=iterations,
                          verbose=ansible_output, say=say)
    table = Table(title=f"{escape(bundle_path.name)}: {len(result['hosts'])} hosts")
    for col in ("host", "status", "release", "L4T", "TensorRT", "built", "reused", "step", "reason"):
        table.add_column(col)
    for host in result["hosts"].values():
        colour = "green" if host.status in ("live", "rolled back", "unchanged", "would change") else "red"
        table.add_row(escape(host.name), f"[{colour}]{host.status}[/]", escape(host.release or "-"),
                      escape(str(host.facts.get("l4t") or "-")), escape(str(host.facts.get("tensorrt") or "-")),
                      ",".join(host.built) or "-", ",".join(host.reused) or "-",
                      escape(host.step or "-") if host.status not in ("live",) else "-",
                      escape(host.reason or "-"))
    stdout.print(table)
    stdout.print(f"results: {escape(str(result['out']))}/<host>/<release>/verify.json")
    if result["page"]:
        wrote(result["page"], result["page"].with_suffix(".json"))
    emit_json({"bundle": bundle_path.name, "hosts": result["rows"], "exit_code": result["exit_code"]},
              json_path)
    if result["exit_code"]:
        raise SystemExit(result["exit_code"])
