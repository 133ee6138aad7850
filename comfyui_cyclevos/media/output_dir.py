"""Output transactions: a result appears under its final name complete, or not at all, and nothing cyclevos
did not write is ever replaced.

``OutputFolder`` is the piece a command uses for a folder of frames::

    folder = OutputFolder(out, inputs=[video, mask])   # checks: ours or absent, not an input, writable
    partial = folder.begin()                            # a fresh, unique hidden folder beside ``out``
    ... write the files into partial, the summary (``DONE_FILE``) last ...
    folder.publish()                                    # renamed into place; never over another run's result

Each run gets its own ``.NAME.<pid>-<random>.partial`` folder (created exclusively), so two runs on one
output never share files; ``publish`` refuses when ``out`` changed since the check (another run finished
there meanwhile) and leaves this run's result in its partial folder. ``check_output_file`` guards single
files (videos, reports) the same way; ``mark``/``is_marked`` tag the files cyclevos writes so a later run may
replace them. Leftovers of killed runs (hidden partial names whose process is gone) are removed on the next
run on the same name.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path

from ..errors import InputError

DONE_FILE = "cyclevos.json"  # written last: its presence marks a complete output folder
MARK = b"written-by-cyclevos"  # in the metadata of every video and plot cyclevos writes
CSV_HEADER = "frame,object,score"  # the first line of the reports cyclevos writes
_PARTIAL = re.compile(r"^\.(?P<name>.+)\.(?P<pid>\d+)-[A-Za-z0-9_]+\.(?:partial|old)(?:\.[A-Za-z0-9]+)?$")


def _real(path: str | os.PathLike) -> Path:
    return Path(os.path.realpath(os.path.abspath(os.path.expanduser(os.fspath(path)))))


def _inside(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def pid_alive(pid: int) -> bool:
    if pid <= 0:
        return True  # not a process we can reason about: keep its files
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # exists, owned by someone else
    return True


def clean_stale_partials(target: str | os.PathLike) -> list[Path]:
    """Remove the hidden partial files and folders of ``target`` left by runs that died (their pid is gone);
    only names of our own pattern for this very target are touched. Returns what was removed."""
    target = Path(os.path.abspath(target))
    removed = []
    try:
        entries = list(target.parent.iterdir())
    except OSError:
        return removed
    for p in entries:
        m = _PARTIAL.match(p.name)
        if m is None or m["name"] != target.name or pid_alive(int(m["pid"])):
            continue
        try:
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p)
            else:
                p.unlink()
            removed.append(p)
        except OSError:
            pass
    return removed


def partial_name(path: str | os.PathLike, suffix: str = "") -> Path:
    """A hidden temporary name beside ``path`` (so os.replace stays on one filesystem), of the pattern
    ``clean_stale_partials`` knows; the caller creates it exclusively."""
    path = Path(path)
    return path.with_name(f".{path.name}.{os.getpid()}-{os.urandom(4).hex()}.partial{suffix}")


def _summary(folder: Path) -> dict | None:
    try:
        data = json.loads((folder / DONE_FILE).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def is_cyclevos_output(folder: str | os.PathLike) -> bool:
    """True for a folder written by cyclevos: a summary, and besides it only the files the summary names
    (or, for summaries without a file list, only .png files)."""
    folder = Path(folder)
    if folder.is_symlink() or not folder.is_dir():
        return False
    summary = _summary(folder)
    if summary is None:
        return False
    listed = summary.get("files")
    for p in folder.iterdir():
        if p.name == DONE_FILE:
            continue
        if p.is_symlink() or not p.is_file():
            return False
        if isinstance(listed, list) and p.name not in listed:
            return False
        if not isinstance(listed, list) and p.suffix.lower() != ".png":
            return False
    return True


def is_marked(path: str | os.PathLike) -> bool:
    """True for a file cyclevos wrote: a video or plot carrying ``MARK`` in its metadata, or a report .csv."""
    p = Path(path)
    try:
        if p.suffix.lower() == ".csv":
            with open(p, encoding="utf-8", errors="replace") as f:
                return f.readline().strip() == CSV_HEADER
        size = p.stat().st_size
        with open(p, "rb") as f:
            head = f.read(1 << 16)
            f.seek(max(0, size - (4 << 20)))
            tail = f.read()
        return MARK in head or MARK in tail
    except OSError:
        return False


def check_writable(path: Path, what: str) -> None:
    parent = path.parent
    while not parent.exists():  # the nearest existing folder above must take the new ones
        parent = parent.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise InputError(f"cannot write {what} {path}: {parent} is not a writable folder; choose another place")


def _check_not_input(path: Path, inputs: Iterable[str | os.PathLike], what: str, folder: bool) -> None:
    real = _real(path)
    for i in inputs:
        if i is None:
            continue
        ri = _real(i)
        if real == ri or (not folder and ri.is_dir() and _inside(real, ri)):
            raise InputError(f"{what} {path} is an input of this run: choose another path")
        if folder and (_inside(real, ri) or _inside(ri, real)):
            raise InputError(f"{what} {path} holds or sits inside the input {i}: choose a folder apart from the inputs")


def check_output_file(path: str | os.PathLike, inputs: Iterable[str | os.PathLike] = (), what: str = "output") -> None:
    """Refuse an output file that is an input, a folder, or an existing file cyclevos did not write; and one
    whose folder cannot be written."""
    p = Path(os.path.abspath(os.path.expanduser(os.fspath(path))))
    _check_not_input(p, inputs, what, folder=False)
    if p.is_dir():
        raise InputError(f"{what} {path} is a folder: give a file name")
    if p.exists() and not is_marked(p):
        raise InputError(f"{what} {path} exists and was not written by cyclevos: choose another name or remove it")
    check_writable(p, what)


def _identity(path: Path) -> tuple | None:
    try:
        st = path.lstat()
    except FileNotFoundError:
        return None
    summary = path / DONE_FILE
    try:
        done = summary.stat().st_mtime_ns
    except OSError:
        done = None
    return st.st_dev, st.st_ino, st.st_mtime_ns, done


class OutputFolder:
    """A folder of results published all at once (see the module's docstring)."""

    def __init__(self, out: str | os.PathLike, inputs: Iterable[str | os.PathLike] = (), what: str = "--out"):
        self.out = Path(os.path.abspath(os.path.expanduser(os.fspath(out))))
        self.what = what
        self.partial: Path | None = None
        self.check(inputs)

    def check(self, inputs: Iterable[str | os.PathLike] = ()) -> None:
        """The checks of the constructor, again (e.g. once the inputs are known)."""
        out, what = self.out, self.what
        if not out.name or os.path.ismount(out) or _inside(Path.cwd().resolve(), _real(out)):
            raise InputError(f"{what} {out} is the current folder, one above it or a mount point: give a new folder")
        _check_not_input(out, inputs, what, folder=True)
        if out.is_symlink() or out.exists():
            if out.is_symlink() or not out.is_dir():
                raise InputError(
                    f"{out} exists and is not a cyclevos output folder: choose another {what} or remove it"
                )
            if any(out.iterdir()) and not is_cyclevos_output(out):
                raise InputError(
                    f"{out} exists and is not a cyclevos output folder (it holds files cyclevos did not write): "
                    f"choose another {what} or remove it"
                )
        check_writable(out, what)
        self.seen = _identity(out)

    def begin(self) -> Path:
        """A fresh, unique hidden folder beside ``out`` for this run's files (stale ones of dead runs go)."""
        clean_stale_partials(self.out)
        try:
            self.out.parent.mkdir(parents=True, exist_ok=True)
            self.partial = Path(
                tempfile.mkdtemp(dir=self.out.parent, prefix=f".{self.out.name}.{os.getpid()}-", suffix=".partial")
            )
        except OSError as e:
            raise InputError(
                f"cannot create a folder beside {self.out} ({e.strerror or e}): choose a writable {self.what}"
            ) from None
        return self.partial

    def publish(self) -> Path:
        """Rename the partial folder to ``out``: over an empty folder, or over the cyclevos output seen at the
        check (moved aside first, then removed); never over one that changed since (another run's)."""
        assert self.partial is not None, "begin() first"
        out = self.out
        if _identity(out) != self.seen:
            raise InputError(
                f"{out} was written by another run while this one ran: this run's result is left in {self.partial}"
            )
        old = None
        if out.exists() and any(out.iterdir()):
            old = out.with_name(f".{out.name}.{os.getpid()}-{os.urandom(4).hex()}.old")
            try:
                os.rename(out, old)
            except OSError as e:
                raise InputError(
                    f"cannot replace {out} ({e.strerror or e}): the result is left in {self.partial}"
                ) from None
            if not is_cyclevos_output(old):  # swapped for a foreign folder between the check and the move
                with contextlib.suppress(OSError):
                    os.rename(old, out)
                raise InputError(f"{out} changed while this run ran: the result is left in {self.partial}")
        try:
            os.rename(self.partial, out)  # fails on a non-empty folder: another run's result
        except OSError as e:
            if old is not None:
                with contextlib.suppress(OSError):
                    os.rename(old, out)
            raise InputError(
                f"cannot publish {out} ({e.strerror or e}; another run may have finished there): "
                f"this run's result is left in {self.partial}"
            ) from None
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        self.partial = None
        return out
