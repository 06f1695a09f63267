"""Where the weights of a data set's scorer come from: what `score --checkpoint` and `search --scorer-checkpoint`
take, said in --help and in the errors about a missing or unusable weights file.

numpy- and torch-free: --help and the argument checks use it before torch loads.

ImageNet: the paper's scorer is a pretrained ResNet-50. `proxynas_fast.scoring.resnet_imagenet` keeps torchvision's
parameter names and shapes (tests/test_scorer_route.py pins them), so torchvision's published weight files load
as downloaded: a bare state_dict, no conversion.
"""
from __future__ import annotations

TORCHVISION_MODELS_URL = "https://download.pytorch.org/models/"
# torchvision's published ResNet-50 weight files -> the `torchvision.models.ResNet50_Weights` entry each one is.
TORCHVISION_RESNET50_FILES = {
    "resnet50-11ad3fa6.pth": "IMAGENET1K_V2",
    "resnet50-0676ba61.pth": "IMAGENET1K_V1",
}
# Scorer networks built in torchvision's layout (their weight files come from torchvision).
TORCHVISION_LAYOUT_ARCHS = ("resnet18", "resnet50")
# The data sets whose scorer `python -m proxynas_fast.train_scorer` trains.
TRAINABLE_SCORER_DATASETS = ("cifar10", "cifar100", "svhn")


def torchvision_resnet50_source() -> str:
    """One sentence: which torchvision files to pass, and where they are published."""
    files = " or ".join(f"{name} ({entry})" for name, entry in TORCHVISION_RESNET50_FILES.items())
    return (f"torchvision's pretrained ResNet-50 weights file as downloaded (a bare state_dict), {files}, from "
            f"{TORCHVISION_MODELS_URL}<file> (torchvision.models.ResNet50_Weights)")


def scorer_weights_source(dataset: str) -> str:
    """What to pass as the scorer's weights for `dataset`, and where it comes from (one line)."""
    if dataset == "imagenet":
        return f"for imagenet pass {torchvision_resnet50_source()}"
    if dataset in TRAINABLE_SCORER_DATASETS:
        return (f"for {dataset} pass a scorer written by `python -m proxynas_fast.train_scorer --dataset {dataset} "
                f"--out scorer.th` (or a {{'state_dict': ...}} checkpoint of the same network)")
    return f"pass the weights of a scorer network trained on {dataset}"


def layout_hint(arch: str) -> str:
    """For a weights file that does not fit `arch`: what fits (empty for networks outside torchvision's layout)."""
    if arch == "resnet50":
        return f" ({arch} takes {torchvision_resnet50_source()})"
    if arch in TORCHVISION_LAYOUT_ARCHS:
        return f" ({arch} takes torchvision's {arch} weights file as downloaded from {TORCHVISION_MODELS_URL})"
    return ""
