"""Run by ComfyUI-Manager after cloning the pack: installs what requirements.txt lists and is missing.

torch is never installed, upgraded or downgraded: it is not in requirements.txt, only missing packages are
installed, and pip runs with a constraint that pins the torch already present (if any), so no dependency
resolution can replace ComfyUI's torch.
"""

import importlib.util
import os
import re
import subprocess
import sys
import tempfile
from importlib import metadata

HERE = os.path.dirname(os.path.abspath(__file__))
IMPORT_NAMES = {"pillow": "PIL", "imageio-ffmpeg": "imageio_ffmpeg"}  # distribution -> module


def requirements():
    with open(os.path.join(HERE, "requirements.txt"), encoding="utf-8") as f:
        for line in f:
            line = line.split("#", 1)[0].strip()
            if line:
                yield line


def missing(req):
    name = re.split(r"[<>=!~;\[ ]", req, maxsplit=1)[0].strip().lower()
    if name in ("torch", "torchvision", "torchaudio"):
        return False  # never ours to install
    return importlib.util.find_spec(IMPORT_NAMES.get(name, name.replace("-", "_"))) is None


def main():
    todo = [r for r in requirements() if missing(r)]
    if not todo:
        print("cyclevos: all requirements present")
        return
    cmd = [sys.executable, "-m", "pip", "install"]
    constraint = None
    try:
        torch_version = metadata.version("torch")
    except metadata.PackageNotFoundError:
        torch_version = None
    if torch_version:
        constraint = tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False)
        constraint.write(f"torch=={torch_version}\n")
        constraint.close()
        cmd += ["-c", constraint.name]
    print("cyclevos: installing", " ".join(todo))
    try:
        subprocess.check_call(cmd + todo)
    finally:
        if constraint is not None:
            os.unlink(constraint.name)


if __name__ == "__main__":
    main()
