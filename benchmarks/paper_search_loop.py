"""The paper's own search loop on CPU, as its user runs it: the peer of `bench_search_epoch.py`.

The proxy-data paper searches with the DARTS script (`train_search.py`, first order). Written here from that
script's behaviour (no code copied from it), on the proxy's CIFAR-10 JPEG files:

* data: a torchvision-style Dataset over the JPEG files (per item: open the file, PIL decode, convert to RGB,
  RandomCrop(32, padding 4), RandomHorizontalFlip, ToTensor, Normalize with the CIFAR mean/std), one per proxy
  half, each in a `torch.utils.data.DataLoader` (batch 64, shuffled, `num_workers` 2 as the script; pin_memory as
  the script only where CUDA is present: without a GPU PyTorch warns and skips it). Both halves use the training
  transform, as in the script (its two queues are samplers over one augmented training set). torchvision is
  not installed here, so the transforms are written out below with the same per-item work (PIL pad and crop,
  PIL flip, numpy copy to a tensor, float division, clone and normalise).
* model and steps: `tests/reference_darts_modules` (the project's from-behaviour copy of the reference DARTS
  `Network`, `Architect` and `train_search.train` body). We use it, not `Network(backend="reference")`, because
  it is what the paper's user runs: the reference module tree with its per-edge MixedOps, with nothing of
  proxynas_fast in it. Per training batch: a new iterator of the architecture queue (`next(iter(valid_queue))`,
  which with workers starts them again every step, as the script does), the first-order architecture step
  (Adam on the alphas), then the weight step (SGD momentum 0.9, weight decay 3e-4, lr 0.025 from a cosine
  schedule over the paper's 50 epochs, gradients clipped to norm 5).
* validation: `infer` over the architecture queue in eval mode without gradients (loss, top-1, top-5 per batch
  read back to the host, as the script's meters do).
* outputs: the genotype and the softmaxed alphas (the script logs them each epoch) and the weights saved.

`steps` caps the training steps and the validation batches of a quick run (None: the full epoch).
"""
from __future__ import annotations

import itertools
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image, ImageOps
from torch.utils.data import DataLoader, Dataset

from proxynas_fast.data import dataset_info
from proxynas_fast.data.readers import list_image_folder, read_order_file

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
import reference_darts_modules as ref  # noqa: E402  (the tests folder is not a package)

CIFAR = dataset_info("cifar10")


# ------------------------------------------------------------------------------------------- data
def cifar_jpeg_files(root) -> tuple[List[str], np.ndarray]:
    """Files and labels of the training JPEGs by data-set index (train_order.txt), as the package reads them."""
    root = Path(root)
    listed, _, classes = list_image_folder(root / "train")
    return read_order_file(root / "train_order.txt", root, classes, listed=listed)


class PadRandomCrop:
    """RandomCrop(size, padding): zero-pad the PIL image, then cut a window at a uniformly drawn offset."""

    def __init__(self, size: int, padding: int):
        self.size, self.padding = size, padding

    def __call__(self, img: Image.Image) -> Image.Image:
        img = ImageOps.expand(img, border=self.padding, fill=0)
        w, h = img.size
        top = int(torch.randint(0, h - self.size + 1, (1,)).item())
        left = int(torch.randint(0, w - self.size + 1, (1,)).item())
        return img.crop((left, top, left + self.size, top + self.size))


def random_horizontal_flip(img: Image.Image) -> Image.Image:
    return img.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if torch.rand(1).item() < 0.5 else img


def to_tensor(img: Image.Image) -> torch.Tensor:
    """ToTensor: HWC uint8 copied out of the PIL image, to CHW float in [0, 1]."""
    array = np.array(img, np.uint8, copy=True)
    return torch.from_numpy(array).permute(2, 0, 1).contiguous().float().div(255)


class Normalize:
    def __init__(self, mean: Sequence[float], std: Sequence[float]):
        self.mean, self.std = mean, std

    def __call__(self, t: torch.Tensor) -> torch.Tensor:
        mean = torch.as_tensor(self.mean, dtype=t.dtype).view(-1, 1, 1)
        std = torch.as_tensor(self.std, dtype=t.dtype).view(-1, 1, 1)
        return t.clone().sub_(mean).div_(std)


class Compose:
    def __init__(self, steps):
        self.steps = list(steps)

    def __call__(self, x):
        for step in self.steps:
            x = step(x)
        return x


def train_transform() -> Compose:
    return Compose([PadRandomCrop(32, 4), random_horizontal_flip, to_tensor, Normalize(CIFAR.train_mean,
                                                                                          CIFAR.train_std)])


class JpegFiles(Dataset):
    """(image, label) per item: the file decoded with PIL and transformed, in the DataLoader's worker."""

    def __init__(self, files: Sequence[str], labels: Sequence[int], transform):
        self.files, self.labels, self.transform = list(files), [int(v) for v in labels], transform

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int):
        with open(self.files[i], "rb") as f:
            img = Image.open(f).convert("RGB")
        return self.transform(img), self.labels[i]


# ------------------------------------------------------------------------------------------- search
@dataclass
class PaperSetting:
    """train_search.py's CIFAR-10 settings (first order)."""

    batch_size: int = 64
    workers: int = 2
    learning_rate: float = 0.025
    learning_rate_min: float = 0.001
    momentum: float = 0.9
    weight_decay: float = 3e-4
    arch_learning_rate: float = 3e-4
    arch_weight_decay: float = 1e-3
    grad_clip: float = 5.0
    epochs: int = 50  # length of the cosine schedule
    init_channels: int = 16
    layers: int = 8
    seed: int = 0


@dataclass
class PaperEpoch:
    seconds: Dict[str, float] = field(default_factory=dict)  # setup, train, val, outputs, epoch, total
    steps: int = 0
    val_batches: int = 0
    train_losses: List[float] = field(default_factory=list)
    val_loss: float = float("nan")
    val_top1: float = float("nan")
    val_top5: float = float("nan")


def make_queue(files, labels, indices, setting: PaperSetting) -> DataLoader:
    data = JpegFiles([files[i] for i in indices], [labels[i] for i in indices], train_transform())
    return DataLoader(data, batch_size=setting.batch_size, shuffle=True, num_workers=setting.workers,
                      pin_memory=torch.cuda.is_available())


def build_search(setting: PaperSetting):
    """Reference network, its first-order Architect, SGD and the cosine schedule, seeded as the script."""
    torch.manual_seed(setting.seed)
    np.random.seed(setting.seed)
    criterion = nn.CrossEntropyLoss()
    model = ref.Network(setting.init_channels, CIFAR.num_classes, setting.layers, criterion)
    optimizer = torch.optim.SGD(model.parameters(), setting.learning_rate, momentum=setting.momentum,
                                weight_decay=setting.weight_decay)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, setting.epochs,
                                                           eta_min=setting.learning_rate_min)
    architect = ref.Architect(model, SimpleNamespace(momentum=setting.momentum, weight_decay=setting.weight_decay,
                                                     arch_learning_rate=setting.arch_learning_rate,
                                                     arch_weight_decay=setting.arch_weight_decay))
    return model, criterion, optimizer, scheduler, architect


@torch.no_grad()
def infer(queue, model, criterion, limit: Optional[int] = None) -> tuple[float, float, float, int]:
    """Mean loss, top-1 and top-5 (percent) over the queue in eval mode, and the batch count; per batch the
    meters read the values back to the host, as the script's do."""
    model.eval()
    loss_sum = top1 = top5 = count = batches = 0
    for x, y in itertools.islice(queue, limit):
        logits = model(x)
        loss = criterion(logits, y)
        hits = logits.topk(5, dim=1).indices == y[:, None]
        n = y.shape[0]
        loss_sum += loss.item() * n
        top1 += hits[:, 0].sum().item()
        top5 += hits.any(dim=1).sum().item()
        count += n
        batches += 1
    count = max(count, 1)
    return loss_sum / count, 100.0 * top1 / count, 100.0 * top5 / count, batches


def write_outputs(model, out_dir: Path) -> None:
    """What the script does at the end of an epoch: log the genotype and the softmaxed alphas, save the weights."""
    with open(out_dir / "log.txt", "a", encoding="utf-8") as log:
        print(f"genotype = {model.genotype()}", file=log)
        print(F.softmax(model.alphas_normal, dim=-1), file=log)
        print(F.softmax(model.alphas_reduce, dim=-1), file=log)
    torch.save(model.state_dict(), out_dir / "weights.pt")


def run_paper_epoch(jpeg_root, weights_idx, arch_idx, out_dir, setting: Optional[PaperSetting] = None,
                    steps: Optional[int] = None) -> PaperEpoch:
    """One search epoch of the paper's loop on the proxy halves (data-set indices); wall times per phase."""
    setting = setting or PaperSetting()
    result, t0 = PaperEpoch(), time.perf_counter()
    files, labels = cifar_jpeg_files(jpeg_root)
    model, criterion, optimizer, scheduler, architect = build_search(setting)
    train_queue = make_queue(files, labels, weights_idx, setting)
    valid_queue = make_queue(files, labels, arch_idx, setting)
    lr = scheduler.get_last_lr()[0]
    t1 = time.perf_counter()
    result.train_losses = ref.train(itertools.islice(train_queue, steps), valid_queue, model, architect, criterion,
                                    optimizer, lr, unrolled=False, grad_clip=setting.grad_clip)
    t2 = time.perf_counter()
    val = infer(valid_queue, model, criterion, steps)
    result.val_loss, result.val_top1, result.val_top5, result.val_batches = val
    t3 = time.perf_counter()
    scheduler.step()
    write_outputs(model, Path(out_dir))
    t4 = time.perf_counter()
    result.steps = len(result.train_losses)
    result.seconds = dict(setup=t1 - t0, train=t2 - t1, val=t3 - t2, outputs=t4 - t3, epoch=t3 - t1, total=t4 - t0)
    return result
