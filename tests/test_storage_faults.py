"""The file system fails: disk full, read-only, a path through a file, bad data files, SIGTERM
after training. Each ends in one line naming the file and the problem, exit status 2 (143 for
SIGTERM); the last good checkpoint is kept, and resuming once the fault is gone gives the same
bits as a run that never met it.

Disk full and read-only are tested twice: injected into the library's writes (always), and for
real on a small tmpfs mounted in a private user and mount namespace (``unshare -rm``), which runs
wherever unprivileged user namespaces are allowed and is skipped, saying so, elsewhere.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pyro_moe import checkpoint
from pyro_moe.cli import main

ARGS = ["moe", "--data", "sign-flip", "--data-option", "n=120", "-K", "2", "--seed", "5"]
QUIET = ["--quiet", "--no-figures"]


def one_line_error(capsys, code: int, *fragments: str) -> str:
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.startswith("pyro-moe: error:") and len(err.strip().splitlines()) == 1, err
    for fragment in fragments:
        assert fragment in err, err
    return err


def assert_same_run(a: Path, b: Path) -> None:
    """Every tensor of checkpoint.pt and best.pt, and metrics.csv without wall-clock seconds."""
    for name in ("checkpoint.pt", "best.pt"):
        sa, sb = checkpoint.load_checkpoint(a / name), checkpoint.load_checkpoint(b / name)
        for part in ("model", "guide"):
            for key, value in sa[part].items():
                assert torch.equal(value, sb[part][key]), (name, part, key)
    assert _metrics(a) == _metrics(b)


def _metrics(run: Path) -> list[list[str]]:
    rows = [line.split(",") for line in (run / "metrics.csv").read_text().splitlines()]
    drop = rows[0].index("wall_seconds")
    return [row[:drop] + row[drop + 1 :] for row in rows]


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """An uninterrupted 4-epoch run."""
    out = tmp_path_factory.mktemp("reference") / "run"
    assert main(["train", *ARGS, "--epochs", "4", "--out", str(out), *QUIET]) == 0
    return out


@pytest.fixture
def two_epochs(tmp_path) -> Path:
    out = tmp_path / "run"
    assert main(["train", *ARGS, "--epochs", "2", "--out", str(out), *QUIET]) == 0
    return out


def failing_writes(monkeypatch, code: int, names: tuple[str, ...] = ()) -> None:
    """Every atomic write (of a file in ``names``, or all) fails with OS error ``code``."""
    real = checkpoint._replace_with

    def write(path: Path, data: bytes) -> None:
        if not names or path.name in names:
            raise OSError(code, os.strerror(code))
        real(path, data)

    monkeypatch.setattr(checkpoint, "_replace_with", write)


RESUME = ["train", "--resume", "--epochs", "4", "--quiet"]


@pytest.mark.parametrize(
    "code,names,message",
    [
        (errno.ENOSPC, ("checkpoint.pt",), "checkpoint.pt: No space left on device"),
        (errno.EROFS, (), "Read-only file system"),
    ],
    ids=["disk-full-on-checkpoint", "read-only"],
)
def test_an_injected_os_error_is_one_line_and_resume_is_exact_after_it(
    two_epochs, reference, capsys, monkeypatch, code, names, message
):
    before = (two_epochs / "checkpoint.pt").read_bytes()
    with monkeypatch.context() as patch:
        failing_writes(patch, code, names)
        one_line_error(capsys, main([*RESUME, "--out", str(two_epochs)]), message)
    assert (two_epochs / "checkpoint.pt").read_bytes() == before
    assert not list(two_epochs.glob(".*.tmp")), "no temporary file is left behind"
    assert main([*RESUME, "--out", str(two_epochs)]) == 0
    assert_same_run(two_epochs, reference)


def test_a_run_folder_under_a_file_is_one_line(tmp_path, capsys):
    afile = tmp_path / "afile"
    afile.write_text("x")
    code = main(["train", *ARGS, "--epochs", "1", "--out", str(afile / "sub"), *QUIET])
    one_line_error(capsys, code, str(afile / "sub"), "Not a directory")
    code = main(["train", *ARGS, "--epochs", "1", "--out", str(afile), *QUIET])
    one_line_error(capsys, code, "is not a folder")


@pytest.mark.parametrize(
    "make,message",
    [
        (lambda p: (p.write_text("x,y\n1,2\n"), p)[1], "is not a .npz file"),
        (lambda p: (p.mkdir(), p)[1], "is a folder, not a file"),
        (lambda p: (p.symlink_to(p), p)[1], "Too many levels of symbolic links"),
        (lambda p: Path("/dev/zero"), "is not a regular file"),
        (lambda p: p, "does not exist"),
    ],
    ids=["csv", "folder", "symlink-loop", "dev-zero", "missing"],
)
def test_a_bad_data_file_is_named_with_its_problem(tmp_path, capsys, make, message):
    data = make(tmp_path / "data.npz")
    code = main(["train", "moe", "--data", str(data), "--out", str(tmp_path / "run"), *QUIET])
    one_line_error(capsys, code, str(data), message)
    assert not (tmp_path / "run").exists()


def test_sigterm_while_figures_are_drawn_is_one_line(tmp_path, capsys, monkeypatch):
    from pyro_moe import plots

    def drawing(*args, **kwargs):
        signal.raise_signal(signal.SIGTERM)
        raise AssertionError("SIGTERM should have stopped the command")

    monkeypatch.setattr(plots, "save_run_figures", drawing)
    out = tmp_path / "run"
    code = main(["train", *ARGS, "--epochs", "1", "--out", str(out), "--quiet"])
    err = capsys.readouterr().err
    assert code == 128 + signal.SIGTERM and len(err.strip().splitlines()) == 1, err
    assert "SIGTERM" in err and "Traceback" not in err
    assert checkpoint.load_checkpoint(out / "checkpoint.pt")["train_state"]["epoch"] == 1
    assert json.loads((out / "summary.json").read_text())["epochs"] == 1


# --- a real full disk and a real read-only file system --------------------------------------------
NAMESPACE_SCRIPT = r"""
import contextlib, io, json, os, shutil, subprocess, sys
from pyro_moe.cli import main

mnt, outside, args = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", mnt], check=True)
run = os.path.join(mnt, "run")
quiet = ["--quiet", "--no-figures"]

def cli(*argv):
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = main(list(argv))
    return code, err.getvalue()

report = {"first": cli("train", *args, "--epochs", "2", "--out", run, *quiet)}
before = open(os.path.join(run, "checkpoint.pt"), "rb").read()
stat = os.statvfs(mnt)
with open(os.path.join(mnt, "filler"), "wb") as f:  # leave 12 KiB: less than a checkpoint
    f.write(b"\0" * (stat.f_bavail * stat.f_frsize - 12 * 1024))
report["full"] = cli("train", "--resume", "--epochs", "4", "--out", run, "--quiet")
report["kept"] = open(os.path.join(run, "checkpoint.pt"), "rb").read() == before
report["temporaries"] = [n for n in os.listdir(run) if n.endswith(".tmp")]
os.remove(os.path.join(mnt, "filler"))
report["freed"] = cli("train", "--resume", "--epochs", "4", "--out", run, "--quiet")
shutil.copytree(run, os.path.join(outside, "after-full"))
subprocess.run(["mount", "-o", "remount,ro", mnt], check=True)
report["read_only"] = cli("train", "--resume", "--epochs", "5", "--out", run, "--quiet")
report["evaluate_read_only"] = cli("evaluate", run)
print(json.dumps(report))
"""


def _namespaces_available() -> bool:
    if shutil.which("unshare") is None or shutil.which("mount") is None:
        return False
    probe = subprocess.run(["unshare", "-rm", "true"], capture_output=True)
    return probe.returncode == 0


@pytest.mark.skipif(
    not _namespaces_available(),
    reason="needs `unshare -rm` (unprivileged user and mount namespaces) to mount a small tmpfs; "
    "the injected disk-full and read-only tests above cover the same paths",
)
def test_a_real_full_disk_and_read_only_file_system(tmp_path, reference):
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    result = subprocess.run(
        ["unshare", "-rm", sys.executable, "-c", NAMESPACE_SCRIPT, str(mnt), str(tmp_path)]
        + [json.dumps(ARGS)],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["first"][0] == 0
    code, err = report["full"]
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "checkpoint.pt: No space left on device" in err
    assert report["kept"] and report["temporaries"] == []
    assert report["freed"][0] == 0, report["freed"]
    assert_same_run(tmp_path / "after-full", reference)
    code, err = report["read_only"]
    assert code == 2 and len(err.strip().splitlines()) == 1 and "Read-only file system" in err
    assert report["evaluate_read_only"][0] == 0, report["evaluate_read_only"]
