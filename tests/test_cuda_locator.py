"""scripts/cuda_locator.py: CUDA_HOME from a real toolkit folder, the pip nvidia header folders from the installed
packages (fake folder trees; no toolkit needed)."""
import importlib.util
import os
import stat
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("cuda_locator", ROOT / "scripts" / "cuda_locator.py")
loc = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(loc)


def _toolkit(path: Path, lib="lib64") -> Path:
    (path / "bin").mkdir(parents=True)
    (path / "bin" / "nvcc").write_text("#!/bin/sh\n")
    (path / "bin" / "nvcc").chmod(0o755)
    (path / "include").mkdir()
    (path / "include" / "cuda_runtime.h").write_text("")
    (path / lib).mkdir()
    (path / lib / "libcudart.so.13").write_text("")
    return path


def _wrapper(path: Path, target: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f'#!/bin/sh\nexec {target} "$@"\n')
    path.chmod(path.stat().st_mode | stat.S_IEXEC)
    return path


def test_is_toolkit_needs_nvcc_header_and_runtime_library(tmp_path):
    assert loc.is_toolkit(str(_toolkit(tmp_path / "cuda-13.0")))
    assert loc.is_toolkit(str(_toolkit(tmp_path / "cuda-lib", lib="lib")))
    partial = tmp_path / "usr-local"
    (partial / "bin").mkdir(parents=True)
    (partial / "bin" / "nvcc").write_text("")
    assert not loc.is_toolkit(str(partial))  # /usr/local with a wrapper nvcc: no header, no libcudart
    (partial / "include").mkdir()
    (partial / "include" / "cuda_runtime.h").write_text("")
    assert not loc.is_toolkit(str(partial))


def test_wrapper_nvcc_in_usr_local_bin_leads_to_the_toolkit_it_runs(tmp_path):
    """The GPU machine's layout: /usr/local/bin/nvcc is `exec /usr/local/cuda-13.0/bin/nvcc`; /usr/local is no
    toolkit (torch took it as CUDA_HOME and linked with -L/usr/local/lib, missing libcudart)."""
    tk = _toolkit(tmp_path / "elsewhere" / "cuda-13.0")
    nvcc = _wrapper(tmp_path / "usr" / "local" / "bin" / "nvcc", tk / "bin" / "nvcc")
    home, why = loc.find_cuda_home({}, str(nvcc), "13.0", roots=[str(tmp_path / "none")])
    assert home == os.path.realpath(tk)
    assert "runs" in why


def test_symlinked_nvcc_is_resolved(tmp_path):
    tk = _toolkit(tmp_path / "cuda-12.8")
    link = tmp_path / "bin" / "nvcc"
    link.parent.mkdir()
    link.symlink_to(tk / "bin" / "nvcc")
    home, why = loc.find_cuda_home({}, str(link), None, roots=[str(tmp_path / "none")])
    assert home == os.path.realpath(tk) and "nvcc on PATH" in why


def test_default_locations_prefer_torchs_cuda_version_then_newest(tmp_path):
    roots = [str(tmp_path)]
    _toolkit(tmp_path / "cuda-12.4")
    _toolkit(tmp_path / "cuda-13.0")
    _toolkit(tmp_path / "cuda-12.10")
    assert loc.find_cuda_home({}, None, "12.4", roots=roots)[0] == os.path.realpath(tmp_path / "cuda-12.4")
    assert loc.find_cuda_home({}, None, "11.8", roots=roots)[0] == os.path.realpath(tmp_path / "cuda-13.0")
    (tmp_path / "cuda").symlink_to(tmp_path / "cuda-12.10")
    assert loc.find_cuda_home({}, None, None, roots=roots)[0] == os.path.realpath(tmp_path / "cuda-12.10")


def test_cuda_home_set_to_a_non_toolkit_is_an_error_naming_it(tmp_path):
    with pytest.raises(loc.CudaNotFound, match=f"CUDA_HOME={tmp_path} is not a CUDA toolkit"):
        loc.find_cuda_home({"CUDA_HOME": str(tmp_path)}, None, None, roots=[str(tmp_path)])
    tk = _toolkit(tmp_path / "cuda-13.0")
    assert loc.find_cuda_home({"CUDA_HOME": str(tk)}, None, None, roots=[])[1] == "$CUDA_HOME"


def test_no_toolkit_lists_what_was_tried(tmp_path):
    nvcc = _wrapper(tmp_path / "bin" / "nvcc", Path("/nonexistent/cuda/bin/nvcc"))
    with pytest.raises(loc.CudaNotFound, match="no CUDA toolkit found.*tried"):
        loc.find_cuda_home({}, str(nvcc), "13.0", roots=[str(tmp_path / "none")])


def _nvidia_site(site: Path, pkg: str, headers) -> Path:
    inc = site / "nvidia" / pkg / "include"
    inc.mkdir(parents=True)
    for h in headers:
        (inc / h).write_text("")
    return inc


def test_nvidia_folders_found_on_every_path_entry_user_site_included(tmp_path):
    """pip's nvidia packages in a user site (not in site.getsitepackages()) are found through the namespace
    package's folders on the path."""
    system, user = tmp_path / "system-site", tmp_path / "user-site"
    _nvidia_site(system, "cuda_runtime", ["cuda_runtime.h"])
    _nvidia_site(user, "cu13", ["cublas_v2.h", "cublasLt.h", "cusparse.h", "cusolverDn.h"])
    dirs = loc.nvidia_package_dirs([str(system), str(user)])
    assert dirs == [os.path.realpath(system / "nvidia"), os.path.realpath(user / "nvidia")]


def test_nvidia_folder_found_from_an_installed_distributions_files(tmp_path):
    site = tmp_path / "site"
    _nvidia_site(site, "cublas", ["cublas_v2.h"])
    (site / "nvidia" / "__init__.py").write_text("")  # a regular package: still found, from the metadata too
    info = site / "nvidia_cublas-13.1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: nvidia-cublas\nVersion: 13.1.0\n")
    (info / "RECORD").write_text("nvidia/cublas/include/cublas_v2.h,,\n")
    assert loc.nvidia_package_dirs([str(site)]) == [os.path.realpath(site / "nvidia")]


def test_header_dirs_add_only_folders_for_headers_the_toolkit_lacks(tmp_path):
    tk = _toolkit(tmp_path / "cuda-13.0")
    site = tmp_path / "site"
    cu13 = _nvidia_site(site, "cu13", ["cuda_runtime.h", "cublas_v2.h", "cublasLt.h", "cusparse.h", "cusolverDn.h"])
    dirs, found = loc.header_dirs(str(tk), [str(site / "nvidia")])
    assert dirs == [str(cu13)]
    assert found["cuda_runtime.h"] == str(tk / "include") and found["cusolverDn.h"] == str(cu13)
    (tk / "include" / "cublas_v2.h").write_text("")
    for h in ("cublasLt.h", "cusparse.h", "cusolverDn.h"):
        (tk / "include" / h).write_text("")
    assert loc.header_dirs(str(tk), [str(site / "nvidia")])[0] == []


def test_missing_headers_are_named(tmp_path):
    tk = _toolkit(tmp_path / "cuda-13.0")
    with pytest.raises(loc.CudaNotFound, match="cublas_v2.h, cublasLt.h, cusparse.h, cusolverDn.h"):
        loc.header_dirs(str(tk), [])


def test_setup_py_uses_the_locator_before_torch_reads_cuda_home():
    """setup.py sets CUDA_HOME from the locator, then hands it to torch.utils.cpp_extension (which reads the
    environment when first imported) and prints where the toolkit and headers came from."""
    src = (ROOT / "setup.py").read_text()
    assert "find_cuda_home" in src and "header_dirs" in src and "nvidia_package_dirs" in src
    assert "cpp_extension.CUDA_HOME = os.environ[\"CUDA_HOME\"]" in src
    assert "site.getsitepackages" not in src and "--use_fast_math" not in src.split("# No --use_fast_math")[1]
