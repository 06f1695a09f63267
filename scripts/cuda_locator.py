"""Where the CUDA build of proxynas_fast._C finds its toolkit and headers (used by setup.py; no torch import).

- CUDA_HOME is a real toolkit folder: one holding bin/nvcc, include/cuda_runtime.h and lib64/libcudart* (or
  lib/libcudart*). An nvcc on PATH may be a wrapper script or a symlink in /usr/local/bin, whose grandparent folder
  is no toolkit (torch would then link with -L/usr/local/lib and miss libcudart), so the candidates are tried in
  order and the first real toolkit wins: $CUDA_HOME, $CUDA_PATH, the folder of nvcc on PATH with symlinks resolved,
  the folder a wrapper script execs, /usr/local/cuda-<torch's CUDA version>, /usr/local/cuda, the other
  /usr/local/cuda-* (newest first), /opt/cuda. A CUDA_HOME set by hand that is no toolkit is an error.
- ATen's CUDA headers include cuBLAS/cuSPARSE/cuSOLVER headers that a system toolkit may lack; pip's `nvidia`
  packages (the ones a CUDA torch wheel depends on) hold them. Their folders come from the installed packages
  themselves: the `nvidia` namespace package's folders on sys.path (user site included) and the files of the
  installed nvidia-* distributions.
"""
from __future__ import annotations

import glob
import importlib.machinery
import importlib.metadata
import os
import re
from typing import Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

# Headers that ATen/cuda/CUDAContext.h includes besides the CUDA runtime's.
NEEDED_HEADERS = ("cuda_runtime.h", "cublas_v2.h", "cublasLt.h", "cusparse.h", "cusolverDn.h")


class CudaNotFound(RuntimeError):
    pass


def is_toolkit(path: str) -> bool:
    """A CUDA toolkit folder: bin/nvcc, include/cuda_runtime.h and the runtime library to link."""
    if not path or not os.path.isdir(path):
        return False
    has_lib = any(glob.glob(os.path.join(path, lib, "libcudart*")) for lib in ("lib64", "lib"))
    return (os.path.isfile(os.path.join(path, "bin", "nvcc")) and
            os.path.isfile(os.path.join(path, "include", "cuda_runtime.h")) and has_lib)


def _wrapper_target(script: str) -> Optional[str]:
    """The absolute nvcc path a small wrapper script execs (`exec /usr/local/cuda-13.0/bin/nvcc "$@"`)."""
    try:
        with open(script, "rb") as f:
            head = f.read(4096)
    except OSError:
        return None
    if not head.startswith(b"#!"):
        return None
    m = re.search(rb"(/[^\s\"']*/bin/nvcc)\b", head)
    return m.group(1).decode() if m else None


def _version_key(path: str) -> Tuple[int, ...]:
    m = re.search(r"cuda-(\d+(?:\.\d+)*)$", path)
    return tuple(int(x) for x in m.group(1).split(".")) if m else ()


def cuda_home_candidates(environ: Mapping[str, str], nvcc: Optional[str], torch_cuda: Optional[str],
                         roots: Sequence[str] = ("/usr/local", "/opt")) -> List[Tuple[str, str]]:
    """(folder, where it came from) in the order they are tried."""
    out: List[Tuple[str, str]] = []
    for key in ("CUDA_HOME", "CUDA_PATH"):
        if environ.get(key):
            out.append((environ[key], f"${key}"))
    if nvcc:
        real = os.path.realpath(nvcc)
        out.append((os.path.dirname(os.path.dirname(real)), f"nvcc on PATH ({nvcc})"))
        target = _wrapper_target(real)
        if target:
            out.append((os.path.dirname(os.path.dirname(os.path.realpath(target))),
                        f"the toolkit nvcc on PATH ({nvcc}) runs"))
    for root in roots:
        if torch_cuda:
            out.append((os.path.join(root, f"cuda-{torch_cuda}"), f"torch's CUDA version {torch_cuda}"))
        out.append((os.path.join(root, "cuda"), "default location"))
        for d in sorted(glob.glob(os.path.join(root, "cuda-*")), key=_version_key, reverse=True):
            out.append((d, "default location"))
    return out


def find_cuda_home(environ: Mapping[str, str] = os.environ, nvcc: Optional[str] = None,
                   torch_cuda: Optional[str] = None, roots: Sequence[str] = ("/usr/local", "/opt")) -> Tuple[str, str]:
    """The toolkit folder and where it came from (`nvcc`: the nvcc found on PATH, or None); raises CudaNotFound
    with every folder tried."""
    explicit = environ.get("CUDA_HOME")
    if explicit and not is_toolkit(explicit):
        raise CudaNotFound(f"CUDA_HOME={explicit} is not a CUDA toolkit folder (it needs bin/nvcc, "
                           "include/cuda_runtime.h and lib64/libcudart*); unset it or point it at one")
    tried = []
    for path, why in cuda_home_candidates(environ, nvcc, torch_cuda, roots):
        if is_toolkit(path):
            return os.path.realpath(path), why
        tried.append(path)
    raise CudaNotFound("no CUDA toolkit found (a folder with bin/nvcc, include/cuda_runtime.h and lib64/libcudart*); "
                       f"tried {', '.join(dict.fromkeys(tried)) or 'nothing'}; set CUDA_HOME")


def nvidia_package_dirs(path: Optional[Sequence[str]] = None) -> List[str]:
    """Folders of pip's `nvidia` namespace package on `path` (default sys.path, user site included), found from
    the package itself and from the files of the installed nvidia-* distributions."""
    dirs: List[str] = []
    spec = importlib.machinery.PathFinder.find_spec("nvidia", None if path is None else list(path))
    if spec is not None and spec.submodule_search_locations:
        dirs += [str(p) for p in spec.submodule_search_locations]
    dists = importlib.metadata.distributions() if path is None else importlib.metadata.distributions(path=list(path))
    for dist in dists:
        name = (dist.metadata["Name"] or "").lower()
        if not (name.startswith("nvidia-") or name.startswith("cuda-")):
            continue
        for f in dist.files or ():
            parts = f.parts
            if len(parts) > 1 and parts[0] == "nvidia":
                dirs.append(str(dist.locate_file("nvidia")))
                break
    seen: Dict[str, None] = {}
    for d in dirs:
        real = os.path.realpath(d)
        if os.path.isdir(real):
            seen.setdefault(real, None)
    return list(seen)


def header_dirs(cuda_home: str, package_dirs: Iterable[str],
                needed: Sequence[str] = NEEDED_HEADERS) -> Tuple[List[str], Dict[str, str]]:
    """Include folders to add for the needed headers the toolkit lacks, and where each needed header comes from.
    Raises CudaNotFound naming the headers found nowhere."""
    toolkit_inc = os.path.join(cuda_home, "include")
    found: Dict[str, str] = {}
    dirs: List[str] = []
    candidates = [inc for base in package_dirs for inc in sorted(glob.glob(os.path.join(base, "*", "include")))]
    for h in needed:
        if os.path.isfile(os.path.join(toolkit_inc, h)):
            found[h] = toolkit_inc
            continue
        for inc in candidates:
            if os.path.isfile(os.path.join(inc, h)):
                found[h] = inc
                if inc not in dirs:
                    dirs.append(inc)
                break
    missing = [h for h in needed if h not in found]
    if missing:
        raise CudaNotFound(f"CUDA headers {', '.join(missing)} are neither in {toolkit_inc} nor in a pip nvidia "
                           f"package ({', '.join(package_dirs) or 'none installed'}); install the toolkit's "
                           "libraries or the CUDA build of torch with its nvidia-* dependencies")
    return dirs, found
