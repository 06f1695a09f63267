"""Print a hash of what the native extension is built from: every file under csrc/, setup.py, pyproject.toml,
the build settings in the environment, the torch and Python versions and whether a CUDA device is visible.
scripts/install.sh skips the build when it equals the stamp written after the last good build."""
import hashlib
import os
import pathlib
import sys

import torch

SETTINGS = ("FORCE_CUDA", "PROXYNAS_SKIP_CUDA", "TORCH_CUDA_ARCH_LIST", "CUDA_HOME")


def build_stamp(root: pathlib.Path) -> str:
    h = hashlib.sha256()
    files = sorted(p for p in (root / "csrc").rglob("*") if p.is_file())
    for p in files + [root / "setup.py", root / "pyproject.toml"]:
        h.update(str(p.relative_to(root)).encode() + b"\0" + p.read_bytes() + b"\0")
    for key in SETTINGS:
        h.update(f"{key}={os.environ.get(key, '')}\0".encode())
    # Whether a CUDA device is visible decides whether the CUDA kernels are built (setup.py).
    h.update(f"torch={torch.__version__} python={sys.version.split()[0]} "
             f"cuda_device={torch.cuda.is_available()}".encode())
    return h.hexdigest()


if __name__ == "__main__":
    print(build_stamp(pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else ".").resolve()))
