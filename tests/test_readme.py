"""README's example commands name only paths that something before them makes: `make demo`,
a `make export`, or an earlier line's `--out`."""

import re
from pathlib import Path

ROOT = Path(__file__).parent.parent
CONSUMERS = {"parity", "bench", "debug", "calibrate", "build", "bundle", "verify", "eval", "export"}


def _made_by_make() -> set[str]:
    makefile = (ROOT / "Makefile").read_text()
    return {m for m in re.findall(r"^DEMO_(?:RUN|WORK)\s*:=\s*(\S+)", makefile, re.M)}


def test_every_path_a_readme_command_reads_is_made_before_it():
    made = _made_by_make()
    missing = []
    blocks = re.findall(r"```[a-z]*\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    for line in (line for block in blocks for line in block.splitlines()):
        for model in re.findall(r"make (?:export|calibrate|engines) MODEL=(\S+)", line):
            made.add(f"artifacts/{model}")
        made.update(re.findall(r"--out (\S+)", line))
        command = re.match(r"\s*(?:- run: )?resnet-edge (\w+) ((?:artifacts|runs|dist)/\S+)", line)
        if command and command[1] in CONSUMERS:
            path = command[2]
            if not any(path == m or path.startswith(m.rstrip("/") + "/")
                       for m in made):
                missing.append(line.strip())
    assert made >= {"runs/demo-resnet20", "artifacts/demo-resnet20"}
    assert not missing, missing
