"""Scoring a data set: the entropy (nats) of a pretrained network's softmax output for every example.

Evaluation mode, no augmentation, original order. Under torchrun each rank scores a contiguous shard
and the shards are gathered in index order, so the result equals a single-process run.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn

from ..loaders import build_imagenet_loader
from ..ops import entropy_histogram, make_log10_edges

# log10(entropy) spans at most [-46, log10(log 1000)] for float32 logits; the histogram of the scoring
# run uses the data set's bin width over that span.
_LOG10_RANGE = (-46.0, 1.0)


@dataclass
class ScoreResult:
    entropy: np.ndarray  # float64 [N], nats
    labels: np.ndarray  # int64 [N]
    predictions: np.ndarray  # int64 [N], argmax of the scorer
    features: Optional[np.ndarray] = None  # float32 [N, D] penultimate features when asked for
    bin_edges: Optional[np.ndarray] = None  # log10 edges of the histogram below
    bin_counts: Optional[np.ndarray] = None

    @property
    def top1(self) -> float:
        return float((self.predictions == self.labels).mean())


def _shard_range(n: int, rank: int, world: int):
    per = (n + world - 1) // world
    return min(rank * per, n), min((rank + 1) * per, n), per


def _batches_from_arrays(images: np.ndarray, mean, std, batch_size, device, lo, hi):
    """uint8 HWC images -> normalised float NCHW batches on the device, in order."""
    mean_t = torch.tensor(mean, device=device).view(1, 3, 1, 1)
    std_t = torch.tensor(std, device=device).view(1, 3, 1, 1)
    for s in range(lo, hi, batch_size):
        x = torch.from_numpy(images[s:min(s + batch_size, hi)]).to(device).permute(0, 3, 1, 2).float()
        yield (x.div_(255.0) - mean_t) / std_t


@torch.no_grad()
def score_examples(model: nn.Module, batches, *, num_examples: int, labels: Sequence[int], device,
                   bin_width: float, with_features: bool = False, progress: bool = False) -> ScoreResult:
    """Run `model` over `batches` (an iterable of input tensors covering the examples in order)."""
    from tqdm import tqdm

    model = model.to(device).eval()
    edges = make_log10_edges(bin_width, *_LOG10_RANGE)
    ents, preds, feats = [], [], []
    counts = torch.zeros(len(edges) - 1, dtype=torch.int64)
    bar = tqdm(total=num_examples, unit="img", disable=not progress, desc="scoring")
    for x in batches:
        if with_features and hasattr(model, "features"):
            f = model.features(x)
            logits = model.linear(f) if hasattr(model, "linear") else model.fc(f)
            feats.append(f.float().cpu())
        else:
            logits = model(x)
        ent, _, c = entropy_histogram(logits.float(), edges)
        ents.append(ent.cpu())
        preds.append(logits.argmax(1).cpu())
        counts += c.cpu()
        bar.update(x.shape[0])
    bar.close()
    entropy = torch.cat(ents).double().numpy() if ents else np.zeros(0)
    return ScoreResult(
        entropy=entropy,
        labels=np.asarray(labels, np.int64),
        predictions=torch.cat(preds).numpy() if preds else np.zeros(0, np.int64),
        features=torch.cat(feats).numpy() if feats else None,
        bin_edges=edges.numpy(),
        bin_counts=counts.numpy(),
    )


def score_dataset(model: nn.Module, dataset, *, mean, std, batch_size: int = 500, device="cpu",
                  bin_width: float = 0.25, with_features: bool = False, progress: bool = False,
                  image_size: int = 224, num_threads: int = 2) -> ScoreResult:
    """Entropy of every example of `dataset` (ArrayDataset or FileDataset), in index order.

    When torch.distributed is initialised, each rank scores a contiguous shard and all ranks return the
    gathered, complete result.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    device = torch.device(device)
    n = len(dataset)
    world = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
    rank = dist.get_rank() if world > 1 else 0
    lo, hi, per = _shard_range(n, rank, world)
    labels = np.asarray(dataset.labels[lo:hi], np.int64)
    if hasattr(dataset, "images"):
        batches = _batches_from_arrays(dataset.images, mean, std, batch_size, device, lo, hi)
    else:
        loader = build_imagenet_loader(list(dataset.files[lo:hi]), labels, batch_size, train=False,
                                       device=device, backend="auto", num_threads=num_threads,
                                       image_size=image_size)
        batches = (x for x, _ in loader)
    part = score_examples(model, batches, num_examples=hi - lo, labels=labels, device=device,
                          bin_width=bin_width, with_features=with_features, progress=progress and rank == 0)
    if world == 1:
        return part
    return _gather(part, n, per, world, device)


def _gather(part: ScoreResult, n: int, per: int, world: int, device) -> ScoreResult:
    """All-gather equal-size (padded) shards and cut the padding: index order is preserved."""
    backend_device = device if dist.get_backend() == "nccl" else torch.device("cpu")

    def gather(arr: np.ndarray) -> np.ndarray:
        t = torch.from_numpy(np.ascontiguousarray(arr))
        padded = torch.zeros((per,) + tuple(t.shape[1:]), dtype=t.dtype)
        padded[: len(t)] = t
        padded = padded.to(backend_device)
        out = [torch.empty_like(padded) for _ in range(world)]
        dist.all_gather(out, padded)
        return torch.cat([o.cpu() for o in out])[:n].numpy()

    counts = torch.from_numpy(part.bin_counts).to(backend_device)
    dist.all_reduce(counts)
    return ScoreResult(
        entropy=gather(part.entropy),
        labels=gather(part.labels),
        predictions=gather(part.predictions),
        features=gather(part.features) if part.features is not None else None,
        bin_edges=part.bin_edges,
        bin_counts=counts.cpu().numpy(),
    )
