"""Writes what `benchmarks/gpu_check.sh` needs on a GPU machine that has the repository only (no ../shared).

    python benchmarks/gpu_prepare.py --shared ../shared --out gpu-check-data [--portion 0.1 | --count N]

The proxy is the paper's P1 selection (10% of CIFAR-10 by default) from the reference ResNet-20 entropies. Its
images are decoded from the CIFAR-10 JPEGs and stored as torchvision's `cifar-10-batches-py` pickles (uint8 rows
of 3072 bytes, about 15 MB for 5,000 images), which `proxynas_fast.data` reads without PIL or DALI; beside them
`entropy.txt` lists the same examples re-indexed 0..n-1 with their entropies and labels, so the search's P1
selection of all n examples (`--count n`) reproduces exactly this proxy. `manifest.json` records the source.
"""
from __future__ import annotations

import argparse
import json
import pickle
import sys
from pathlib import Path

import numpy as np

from proxynas_fast.data.readers import decode_images
from proxynas_fast.entropy_file import read_entropy_file, write_entropy_file
from proxynas_fast.selection import select

ENTROPY_NAME = "cifar10_resnet20_index_entropy_class.txt"
CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
BATCHES = 5


def read_order(order_file: Path):
    """train_order.txt: `index path label` per line -> {index: (path, label)}."""
    out = {}
    with open(order_file, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            parts = line.split()
            if not parts:
                continue
            if len(parts) != 3:
                raise SystemExit(f"{order_file}:{lineno}: expected 'index path label', got {line.strip()[:80]!r}")
            out[int(parts[0])] = (parts[1], int(parts[2]))
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shared", type=Path, required=True, help="the shared data folder (data/, reference/)")
    ap.add_argument("--out", type=Path, required=True)
    size = ap.add_mutually_exclusive_group()
    size.add_argument("--portion", type=float, default=None, help="share of CIFAR-10 to select (default 0.1)")
    size.add_argument("--count", type=int, default=None, help="number of examples instead (toy runs)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    jpeg_root = args.shared / "data" / "cifar10-jpeg"
    entropy_file = args.shared / "reference" / "entropy" / ENTROPY_NAME
    order_file = jpeg_root / "train_order.txt"
    for p in (entropy_file, order_file):
        if not p.is_file():
            raise SystemExit(f"gpu_prepare: {p} is missing (is --shared {args.shared} the shared data folder?)")
    table = read_entropy_file(entropy_file).sorted_by_index()
    portion = args.portion if args.portion is not None or args.count is not None else 0.1
    positions = select("p1", table.entropy, portion=portion, count=args.count, labels=table.label,
                       dataset="cifar10", seed=args.seed)
    order = read_order(order_file)
    index = table.index[positions]
    missing = [int(i) for i in index if int(i) not in order]
    if missing:
        raise SystemExit(f"gpu_prepare: {order_file} has no line for indices {missing[:5]}")
    paths = [str(jpeg_root / order[int(i)][0]) for i in index]
    labels = np.array([order[int(i)][1] for i in index], dtype=np.int64)
    if not np.array_equal(labels, table.label[positions]):
        raise SystemExit(f"gpu_prepare: labels of {entropy_file} and {order_file} disagree")
    images = decode_images(paths, (32, 32))  # [n, 32, 32, 3] uint8
    rows = np.ascontiguousarray(images.transpose(0, 3, 1, 2).reshape(len(images), 3072))

    pickles = args.out / "cifar-10-batches-py"
    pickles.mkdir(parents=True, exist_ok=True)
    for b, part in enumerate(np.array_split(np.arange(len(rows)), BATCHES), 1):
        with open(pickles / f"data_batch_{b}", "wb") as f:
            pickle.dump({"data": rows[part], "labels": labels[part].tolist()}, f, protocol=4)
    with open(pickles / "batches.meta", "wb") as f:
        pickle.dump({"label_names": CLASSES}, f, protocol=4)
    write_entropy_file(args.out / "entropy.txt", np.arange(len(rows)), table.entropy[positions], labels)
    manifest = dict(selection="p1", portion=portion, count=int(len(rows)), seed=args.seed,
                    source_entropy=str(entropy_file), source_images=str(jpeg_root),
                    dataset_indices_head=[int(i) for i in index[:10]])
    (args.out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    print(f"gpu_prepare: wrote {len(rows)} P1 images ({rows.nbytes / 2**20:.1f} MiB) to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
