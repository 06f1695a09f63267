"""Entropy scoring: pretrained scorer networks and the per-example softmax entropy of a data set."""
from .entropy import ScoreResult, score_dataset, score_examples
from .models import CheckpointError, create_scorer, list_scorers, load_scorer, read_state_dict
from .resnet_cifar import CifarResNet, resnet20, resnet32, resnet44, resnet56, resnet110
from .resnet_imagenet import ImageNetResNet, resnet18, resnet50

__all__ = ["ScoreResult", "score_dataset", "score_examples", "CheckpointError", "create_scorer", "list_scorers",
           "load_scorer", "read_state_dict", "CifarResNet", "ImageNetResNet", "resnet20", "resnet32", "resnet44",
           "resnet56", "resnet110", "resnet18", "resnet50"]
