"""Build proxynas_fast and its native extension `proxynas_fast._C`.

CPU kernels are always built. CUDA kernels are built when torch has CUDA and nvcc is found;
FORCE_CUDA=1 forces them (e.g. CI without a GPU), PROXYNAS_SKIP_CUDA=1 skips them.
TORCH_CUDA_ARCH_LIST chooses the GPU targets (default here: 8.0;9.0, i.e. A100 and H100/H200).
"""
import glob
import os
import sys

from setuptools import find_packages, setup

ROOT = os.path.dirname(os.path.abspath(__file__))


def _flag(name):
    return os.environ.get(name, "0").lower() in ("1", "true", "yes", "on")


def _extensions():
    import torch
    from torch.utils.cpp_extension import CUDA_HOME, CppExtension, CUDAExtension

    csrc = os.path.join("csrc")
    sources = sorted(glob.glob(os.path.join(csrc, "*.cpp")))
    sources += sorted(glob.glob(os.path.join(csrc, "ops", "*.cpp")))
    sources += sorted(glob.glob(os.path.join(csrc, "ops", "cpu", "*.cpp")))
    sources += sorted(glob.glob(os.path.join(csrc, "ops", "autograd", "*.cpp")))
    cuda_sources = sorted(glob.glob(os.path.join(csrc, "ops", "cuda", "*.cu")))

    want_cuda = (torch.cuda.is_available() and CUDA_HOME is not None) or _flag("FORCE_CUDA")
    if _flag("PROXYNAS_SKIP_CUDA"):
        want_cuda = False
    if want_cuda and CUDA_HOME is None:
        raise RuntimeError("FORCE_CUDA=1 but no CUDA toolkit was found (set CUDA_HOME to the nvcc install)")
    if want_cuda and torch.version.cuda is None:
        raise RuntimeError(f"FORCE_CUDA=1 but torch {torch.__version__} is a CPU build; install a CUDA build of torch")

    opt = ["-O3", "-g0"]
    # The C++ standard is left to torch.utils.cpp_extension (torch >= 2.10 headers need C++20).
    cxx = opt + ["-fopenmp"] if sys.platform.startswith("linux") else opt
    define_macros = []
    include_dirs = [os.path.join(ROOT, "csrc")]
    extra = {"cxx": cxx}
    ext_cls = CppExtension
    if want_cuda:
        os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "8.0;9.0")
        sources += cuda_sources
        define_macros.append(("PROXYNAS_WITH_CUDA", None))
        extra["nvcc"] = ["-O3", "--use_fast_math", "--expt-relaxed-constexpr", "-lineinfo"]
        # pip's CUDA wheels keep ATen/cuda headers' dependencies (cuda_runtime etc.) under nvidia/cu13.
        import site

        for base in site.getsitepackages():
            for sub in ("nvidia/cu13/include", "nvidia/cuda_runtime/include"):
                p = os.path.join(base, sub)
                if os.path.isdir(p):
                    include_dirs.append(p)
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
