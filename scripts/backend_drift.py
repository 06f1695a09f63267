"""How far apart do the alphas of two float32 search runs drift when only the summation order differs?

Runs `--steps` search steps (first-order architecture step with `Architect`, then the SGD weight step with
clipping, as in `train_search.train`) from one float64 starting point on fixed batches of real CIFAR-10 images,
in several variants (`--variants`, default all), and prints max |alpha - alpha_A| after each step against
variant A (reference backend, float32, 1 thread) and, when F runs, against the float64 reference run:

    A  reference backend, float32, 1 thread
    B  reference backend, float32, 1 thread, each batch in reversed sample order (same maths, other sums)
    C  reference backend, float32, 2 threads
    D  reference backend, float32, channels_last memory format
    E  fused backend, float32, 1 thread
    F  reference backend, float64 (the "truth")

Usage: python scripts/backend_drift.py --data-dir ../shared/data/cifar10-jpeg [--C 8 --layers 5 --batch 16]
"""
from __future__ import annotations

import argparse
import copy
import json
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
from PIL import Image

from proxynas_fast.darts import Architect, Network

SETTINGS = dict(momentum=0.9, weight_decay=3e-4, arch_learning_rate=3e-4, arch_weight_decay=1e-3)
LR = 0.025


def load_images(data_dir: Path, n: int):
    lines = (data_dir / "train_order.txt").read_text().splitlines()[:n]
    xs, ys = [], []
    for line in lines:
        _, path, label = line.split("\t")
        xs.append(np.asarray(Image.open(data_dir / path).convert("RGB"), dtype=np.float64) / 255.0)
        ys.append(int(label))
    x = torch.from_numpy(np.stack(xs)).permute(0, 3, 1, 2).contiguous()
    x = (x - x.mean(dim=(0, 2, 3), keepdim=True)) / x.std(dim=(0, 2, 3), keepdim=True)
    return x, torch.tensor(ys)


def run(start: Network, batches, steps, dtype, backend, threads=1, reverse=False, channels_last=False):
    torch.set_num_threads(threads)
    model = copy.deepcopy(start).to(dtype)
    model.backend = backend
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.weights_parameters(), LR, momentum=SETTINGS["momentum"],
                                weight_decay=SETTINGS["weight_decay"])
    architect = Architect(model, SETTINGS)
    history = []
    for step in range(steps):
        (xt, yt), (xv, yv) = batches[step]
        if reverse:
            xt, yt, xv, yv = xt.flip(0), yt.flip(0), xv.flip(0), yv.flip(0)
        xt, xv = xt.to(dtype), xv.to(dtype)
        if channels_last:
            xt, xv = xt.contiguous(memory_format=torch.channels_last), xv.contiguous(memory_format=torch.channels_last)
        architect.step(xt, yt, xv, yv, LR, optimizer, unrolled=False)
        optimizer.zero_grad()
        model._loss(xt, yt).backward()
        nn.utils.clip_grad_norm_(model.weights_parameters(), 5.0)
        optimizer.step()
        history.append(torch.cat([a.detach().double().flatten() for a in model.arch_parameters()]))
    return history


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--C", type=int, default=8)
    parser.add_argument("--layers", type=int, default=5)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--variants", default="ABCDEF")
    args = parser.parse_args(argv)

    x, y = load_images(args.data_dir, 2 * args.steps * args.batch)
    b = args.batch
    batches = [((x[2 * i * b:(2 * i + 1) * b], y[2 * i * b:(2 * i + 1) * b]),
                (x[(2 * i + 1) * b:(2 * i + 2) * b], y[(2 * i + 1) * b:(2 * i + 2) * b])) for i in range(args.steps)]
    torch.manual_seed(args.seed)
    start = Network(args.C, 10, args.layers, nn.CrossEntropyLoss(), backend="reference").double()

    f32, f64 = torch.float32, torch.float64
    specs = {
        "A": dict(dtype=f32, backend="reference"),
        "B": dict(dtype=f32, backend="reference", reverse=True),
        "C": dict(dtype=f32, backend="reference", threads=2),
        "D": dict(dtype=f32, backend="reference", channels_last=True),
        "E": dict(dtype=f32, backend="fused"),
        "F": dict(dtype=f64, backend="reference"),
    }
    runs = {k: run(start, batches, args.steps, **specs[k]) for k in "A" + args.variants.replace("A", "")}
    initial = torch.cat([a.detach().flatten() for a in start.arch_parameters()])
    result = {"config": vars(args) | {"data_dir": str(args.data_dir)},
              "max_alpha_move_A": [float((h - initial).abs().max()) for h in runs["A"]], "vs_A": {}, "vs_float64": {}}
    for k, hist in runs.items():
        result["vs_A"][k] = [float((h - a).abs().max()) for h, a in zip(hist, runs["A"])]
        if "F" in runs:
            result["vs_float64"][k] = [float((h - t).abs().max()) for h, t in zip(hist, runs["F"])]
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
