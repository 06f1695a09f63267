"""Build proxynas_fast and its native extension `proxynas_fast._C`.

CPU kernels are always built. CUDA kernels are built when a CUDA device is visible to torch, or with FORCE_CUDA=1
(e.g. CI without a GPU); PROXYNAS_SKIP_CUDA=1 skips them. TORCH_CUDA_ARCH_LIST chooses the GPU targets (default
here: 8.0;9.0, i.e. A100 and H100/H200). The toolkit and the pip `nvidia` header folders are found by
scripts/cuda_locator.py and printed in the build log. The code is C++17 (torch 2.11's extension standard); a newer
torch may compile it as C++20.
"""
import glob
import importlib.util
import os
import shutil
import sys

from setuptools import find_packages, setup

ROOT = os.path.dirname(os.path.abspath(__file__))


def _flag(name):
    return os.environ.get(name, "0").lower() in ("1", "true", "yes", "on")


def _cuda_locator():
    spec = importlib.util.spec_from_file_location("cuda_locator", os.path.join(ROOT, "scripts", "cuda_locator.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _locate_cuda(torch_cuda, forced):
    """Set CUDA_HOME to a real toolkit before torch.utils.cpp_extension reads it; return the extra include folders,
    or None when no toolkit is found and FORCE_CUDA is not set (a GPU without nvcc: CPU kernels only)."""
    loc = _cuda_locator()
    try:
        home, why = loc.find_cuda_home(os.environ, shutil.which("nvcc"), torch_cuda)
        dirs, found = loc.header_dirs(home, loc.nvidia_package_dirs())
    except loc.CudaNotFound as e:
        if not forced:
            print(f"[proxynas_fast] a CUDA device is visible but {e}; building the CPU kernels only", flush=True)
            return None
        raise SystemExit(f"error: setup.py: FORCE_CUDA=1 but {e}")
    os.environ["CUDA_HOME"] = home
    print(f"[proxynas_fast] CUDA toolkit {home} (from {why})", flush=True)
    for inc in dict.fromkeys(found.values()):
        print(f"[proxynas_fast] CUDA headers from {inc}: "
              f"{' '.join(h for h, d in found.items() if d == inc)}", flush=True)
    return dirs


def _extensions():
    import torch

    csrc = os.path.join("csrc")
    sources = sorted(glob.glob(os.path.join(csrc, "*.cpp")))
    sources += sorted(glob.glob(os.path.join(csrc, "ops", "*.cpp")))
    sources += sorted(glob.glob(os.path.join(csrc, "ops", "cpu", "*.cpp")))
    sources += sorted(glob.glob(os.path.join(csrc, "ops", "autograd", "*.cpp")))
    cuda_sources = sorted(glob.glob(os.path.join(csrc, "ops", "cuda", "*.cu")))

    want_cuda = torch.cuda.is_available() or _flag("FORCE_CUDA")
    if _flag("PROXYNAS_SKIP_CUDA"):
        want_cuda = False
    if want_cuda and torch.version.cuda is None:
        raise SystemExit(f"error: setup.py: FORCE_CUDA=1 but torch {torch.__version__} is a CPU build; "
                         "install a CUDA build of torch")
    cuda_include_dirs = _locate_cuda(torch.version.cuda, _flag("FORCE_CUDA")) if want_cuda else []
    if cuda_include_dirs is None:
        want_cuda = False
    from torch.utils import cpp_extension
    from torch.utils.cpp_extension import CppExtension, CUDAExtension

    if want_cuda:  # cpp_extension read CUDA_HOME when first imported, maybe before _locate_cuda set it
        cpp_extension.CUDA_HOME = os.environ["CUDA_HOME"]

    opt = ["-O3", "-g0"]
    # No -std flag: torch's cpp_extension picks its own standard (C++17 in torch 2.11, C++20 in 2.14); the sources
    # are C++17, which tests/test_build_guard.py checks.
    cxx = opt + ["-fopenmp"] if sys.platform.startswith("linux") else opt
    define_macros = []
    include_dirs = [os.path.join(ROOT, "csrc")]
    extra = {"cxx": cxx}
    ext_cls = CppExtension
    if want_cuda:
        os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "8.0;9.0")
        sources += cuda_sources
        define_macros.append(("PROXYNAS_WITH_CUDA", None))
        # No --use_fast_math: it would turn expf into __expf (entropy kernel) and divisions into approximations
        # (mixed-node moments); the kernels are memory-bound, so exact float math costs nothing measurable.
        extra["nvcc"] = ["-O3", "--expt-relaxed-constexpr", "-lineinfo"]
        include_dirs += cuda_include_dirs
        ext_cls = CUDAExtension
    print(f"[proxynas_fast] building _C with {len(sources)} sources; CUDA kernels: "
          f"{'yes (' + os.environ['TORCH_CUDA_ARCH_LIST'] + ')' if want_cuda else 'no'}", flush=True)
    return [
        ext_cls(
            "proxynas_fast._C",
            sources=sources,
            include_dirs=include_dirs,
            define_macros=define_macros,
            extra_compile_args=extra,
            extra_link_args=["-fopenmp"] if sys.platform.startswith("linux") else [],
        )
    ]


def _cmdclass():
    from torch.utils.cpp_extension import BuildExtension

    return {"build_ext": BuildExtension.with_options(use_ninja=True)}


setup(
    # darts/data holds only data (genotypes.json); listed as a package so setuptools ships it without warning.
    packages=find_packages(include=["proxynas_fast", "proxynas_fast.*"]) + ["proxynas_fast.darts.data"],
    package_data={"proxynas_fast.darts.data": ["*.json"]},
    ext_modules=_extensions(),
    cmdclass=_cmdclass(),
    zip_safe=False,
)
