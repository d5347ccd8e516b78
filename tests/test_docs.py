"""The README and docs back their claims with tests: every test they cite exists, and the README's
Python and shell examples run as written."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

from pyro_moe.cli import main

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
DOCS.append(ROOT / "benchmarks" / "results" / "README.md")
CITED = re.compile(r"tests/(test_\w+\.py)(?:::(test_\w+))?")


def test_every_cited_test_exists():
    missing = []
    for doc in DOCS:
        for file, name in CITED.findall(doc.read_text()):
            path = ROOT / "tests" / file
            if not path.is_file() or (name and f"def {name}(" not in path.read_text()):
                missing.append(f"{doc.name}: tests/{file}{'::' + name if name else ''}")
    assert not missing, missing


def _blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", (ROOT / "README.md").read_text(), re.S)


def test_readme_python_examples_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    blocks = [b for b in _blocks("python") if "pyro_moe" in b]
    assert blocks
    for block in blocks:
        exec(compile(block, "README.md", "exec"), {"__name__": "readme"})


def test_readme_shell_examples_run(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    commands = [
        shlex.split(line, comments=True)
        for block in _blocks("bash")
        for line in block.replace("\\\n", " ").splitlines()
        if line.startswith("pyro-moe ")
    ]
    assert len(commands) >= 3
    for command in commands:
        assert main(command[1:]) == 0, command
