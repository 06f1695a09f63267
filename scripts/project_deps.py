"""Print what scripts/install.sh installs, read from pyproject.toml (the one list of dependencies):
`torch`  -> the exact torch version installed and tested ([tool.proxynas_fast] torch),
`deps`   -> the other runtime dependencies, the test extras and the build requirements, one per line."""
import re
import sys
from pathlib import Path

try:
    import tomllib
except ImportError:  # Python < 3.11: pip vendors the same parser
    from pip._vendor import tomli as tomllib


def _name(req: str) -> str:
    return re.split(r"[\s<>=!~;\[]", req, 1)[0].lower()


def project(root: Path) -> dict:
    with open(root / "pyproject.toml", "rb") as f:
        return tomllib.load(f)


def install_list(cfg: dict) -> list:
    reqs = cfg["project"]["dependencies"] + cfg["project"]["optional-dependencies"]["test"] + \
        cfg["build-system"]["requires"]
    out, seen = [], set()
    for r in reqs:
        name = _name(r)
        if name in ("torch", "setuptools", "wheel") or name in seen:  # torch: pinned; the others: pip's own step
            continue
        seen.add(name)
        out.append(r)
    return out


if __name__ == "__main__":
    what, root = sys.argv[1], Path(sys.argv[2] if len(sys.argv) > 2 else ".")
    cfg = project(root)
    if what == "torch":
        print(cfg["tool"]["proxynas_fast"]["torch"])
    elif what == "deps":
        print("\n".join(install_list(cfg)))
    else:
        sys.exit(f"error: project_deps.py: unknown question {what!r} (torch or deps)")
