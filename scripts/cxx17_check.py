"""Check that the extension's C++ sources are C++17, the standard torch 2.11 (the GPU machine's) builds them with.

Two checks, both cheap:
- `scan`: every file under csrc/ (.cpp, .h, .cu) is searched for the C++20-only headers, library names and
  keywords a kernel is likely to reach for (std::bit_cast, <span>, concepts, consteval, ...). No compiler needed.
- `compile`: every csrc .cpp is compiled with `g++ -std=c++17 -fsyntax-only` against the headers of a torch that
  builds extensions as C++17 (torch 2.11; torch >= 2.12's headers refuse C++17, so the installed torch's headers
  only serve when it is such a torch). The torch headers are parsed once, into a precompiled header.
  The .cu files are not compiled here (nvcc's front end needs the full CUDA compile); they get the scan, and
  `benchmarks/gpu_check.sh --build-check` under torch 2.11 compiles them for real.

Where the C++17 torch headers come from (first found): $PROXYNAS_CXX17_TORCH_INCLUDE (a torch/include folder), the
installed torch when its cpp_extension compiles with -std=c++17, the cache that `python scripts/cxx17_check.py
--fetch` fills (~/.cache/proxynas_fast/torch-2.11.0-include: torch/include unpacked from the torch 2.11.0 wheel,
62 MB; pip downloads the wheel).

    python scripts/cxx17_check.py            # scan + compile; exit 1 with the compiler's first errors
    python scripts/cxx17_check.py --fetch    # only fill the header cache (CI, before the tests)
"""
from __future__ import annotations

import argparse
import glob
import inspect
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

ROOT = Path(__file__).resolve().parent.parent
CXX17_TORCH = "2.11.0"
CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "proxynas_fast" / f"torch-{CXX17_TORCH}-include"

# (pattern, what it is): C++20-only library headers and names, and C++20 keywords/syntax.
CXX20_ONLY: Sequence[Tuple[str, str]] = (
    (r"#\s*include\s*<(bit|span|ranges|concepts|numbers|compare|format|source_location|coroutine|barrier|latch|"
     r"semaphore|stop_token|syncstream|version)>", "a C++20 header"),
    (r"\bstd::(bit_cast|span|ranges|popcount|countl_zero|countr_zero|has_single_bit|bit_width|bit_ceil|bit_floor|"
     r"rotl|rotr|midpoint|lerp|ssize|to_address|erase_if|source_location|format|numbers|is_constant_evaluated|"
     r"assume_aligned|make_shared_for_overwrite|remove_cvref|type_identity|endian)\b", "a C++20 library name"),
    (r"\b(consteval|constinit|co_await|co_yield|co_return|char8_t)\b", "a C++20 keyword"),
    (r"\brequires\s*[({]|\btemplate\s*<[^>]*\b(?:std::)?[a-z_]+\s+auto\b|\bconcept\s+\w+\s*=", "a concept/requires"),
    (r"<=>", "the three-way comparison operator"),
    (r"\[\[\s*(likely|unlikely|no_unique_address)\s*\]\]", "a C++20 attribute"),
    (r"\busing\s+enum\b", "using enum"),
    (r"\.(starts_with|ends_with|contains)\s*\(", "a C++20 member function"),
    (r"\[[^\]]*\]\s*<\s*(typename|class)\b", "a template lambda"),
)


def _strip_comments(text: str) -> str:
    text = re.sub(r"/\*.*?\*/", lambda m: "\n" * m.group(0).count("\n"), text, flags=re.S)
    text = re.sub(r"//[^\n]*", "", text)
    return re.sub(r'"(?:\\.|[^"\\\n])*"', '""', text)


def scan(files: Sequence[Path]) -> List[str]:
    """'path:line: <construct> (<what>)' for each C++20-only construct found (comments and strings skipped)."""
    found = []
    for f in files:
        lines = _strip_comments(f.read_text()).splitlines()
        for no, line in enumerate(lines, 1):
            for pattern, what in CXX20_ONLY:
                m = re.search(pattern, line)
                if m:
                    found.append(f"{f}:{no}: {m.group(0).strip()} ({what})")
    return found


def csrc_files(root: Path = ROOT, exts: Sequence[str] = (".cpp", ".h", ".cu", ".cuh")) -> List[Path]:
    return sorted(p for p in (root / "csrc").rglob("*") if p.suffix in exts)


def installed_torch_is_cxx17() -> Optional[str]:
    """The installed torch's include folder when its cpp_extension compiles extensions as C++17, else None."""
    try:
        from torch.utils import cpp_extension
    except ImportError:
        return None
    if "c++17" not in inspect.getsource(cpp_extension) or "-std=c++20" in inspect.getsource(cpp_extension):
        return None
    return cpp_extension.include_paths()[0]


def torch_include() -> Tuple[Optional[str], str]:
    """(C++17 torch include folder or None, where it came from / why none)."""
    env = os.environ.get("PROXYNAS_CXX17_TORCH_INCLUDE")
    if env:
        return (env, "$PROXYNAS_CXX17_TORCH_INCLUDE") if os.path.isfile(os.path.join(env, "ATen", "ATen.h")) else \
            (None, f"PROXYNAS_CXX17_TORCH_INCLUDE={env} holds no ATen/ATen.h")
    inc = installed_torch_is_cxx17()
    if inc:
        return inc, "the installed torch (C++17)"
    if (CACHE / "ATen" / "ATen.h").is_file():
        return str(CACHE), f"the cache {CACHE}"
    return None, (f"no C++17 torch headers: the installed torch builds as C++20 and {CACHE} is empty "
                  "(python scripts/cxx17_check.py --fetch fills it)")


def fetch(python: str = sys.executable, dest: Path = CACHE) -> Path:
    """Unpack torch/include of the torch 2.11.0 wheel (pip download, no install) into `dest`."""
    if (dest / "ATen" / "ATen.h").is_file():
        return dest
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [python, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:", "-d", tmp,
               f"torch=={CXX17_TORCH}"]
        if os.environ.get("TORCH_INDEX_URL"):
            cmd += ["--index-url", os.environ["TORCH_INDEX_URL"]]
        subprocess.run(cmd, check=True)
        wheel = glob.glob(os.path.join(tmp, "torch-*.whl"))[0]
        part = dest.with_name(dest.name + ".part")
        shutil.rmtree(part, ignore_errors=True)
        with zipfile.ZipFile(wheel) as z:
            for name in z.namelist():
                if name.startswith("torch/include/") and not name.endswith("/"):
                    target = part / name[len("torch/include/"):]
                    target.parent.mkdir(parents=True, exist_ok=True)
                    target.write_bytes(z.read(name))
        part.rename(dest)
    return dest


def _includes(torch_inc: str, root: Path) -> List[str]:
    return ["-I", torch_inc, "-I", os.path.join(torch_inc, "torch", "csrc", "api", "include"),
            "-I", sysconfig.get_paths()["include"], "-I", str(root / "csrc")]


def compile_check(torch_inc: str, sources: Sequence[Path], root: Path = ROOT, cxx: str = "g++",
                  jobs: int = 2) -> Dict[Path, str]:
    """{source: compiler errors} for the sources that do not compile as C++17 (empty: all do)."""
    flags = ["-std=c++17", "-fopenmp", "-DTORCH_EXTENSION_NAME=_C", "-DTORCH_API_INCLUDE_EXTENSION_H"]
    headers = sorted({m for s in sources for m in re.findall(r"#\s*include\s*<((?:ATen|torch|c10)/[^>]+)>",
                                                             s.read_text()) if "cuda" not in m.lower()})
    with tempfile.TemporaryDirectory() as tmp:
        pch = Path(tmp) / "torch_headers.h"
        pch.write_text("".join(f"#include <{h}>\n" for h in headers))
        # The torch headers parsed once; a failure here is torch's (or the compiler's), not ours: report it.
        r = subprocess.run([cxx, *flags, *_includes(torch_inc, root), "-x", "c++-header", str(pch),
                            "-o", str(pch) + ".gch"], capture_output=True, text=True)
        if r.returncode != 0:
            return {pch: r.stderr[-3000:]}

        def one(src: Path) -> Tuple[Path, subprocess.CompletedProcess]:
            return src, subprocess.run([cxx, *flags, *_includes(torch_inc, root), "-include", str(pch),
                                        "-Winvalid-pch", "-fsyntax-only", str(src)], capture_output=True, text=True)

        with ThreadPoolExecutor(max(1, jobs)) as pool:
            results = list(pool.map(one, sources))
    return {src: r.stderr[-3000:] for src, r in results if r.returncode != 0}


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--fetch", action="store_true", help=f"only fill {CACHE} from the torch {CXX17_TORCH} wheel")
    ap.add_argument("--jobs", type=int, default=2)
    args = ap.parse_args(argv)
    if args.fetch:
        print(f"torch {CXX17_TORCH} headers in {fetch()}")
        return 0
    problems = scan(csrc_files())
    for p in problems:
        print(f"error: C++20 in csrc: {p}")
    inc, why = torch_include()
    if inc is None:
        print(f"error: cannot compile-check: {why}")
        return 1
    sources = csrc_files(exts=(".cpp",))
    print(f"compiling {len(sources)} csrc .cpp files as C++17 against {inc} ({why})", flush=True)
    failed = compile_check(inc, sources, jobs=args.jobs)
    for src, err in failed.items():
        print(f"error: {src} does not compile as C++17:\n{err}")
    return 1 if problems or failed else 0


if __name__ == "__main__":
    sys.exit(main())
