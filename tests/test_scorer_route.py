"""The ImageNet scorer route: the ResNet-50 scorer has torchvision's parameter layout (so torchvision's published
weight files load as downloaded), and the CLIs say what to pass when the file is absent or does not fit."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from proxynas_fast import score, train_scorer
from proxynas_fast.scorer_weights import TORCHVISION_MODELS_URL, TORCHVISION_RESNET50_FILES
from proxynas_fast.scoring import CheckpointError, load_scorer, resnet18, resnet50
from proxynas_fast.scoring import score_run
from proxynas_fast.search.cli_args import build_parser

STORED_LAYOUT = Path(__file__).resolve().parent / "data" / "torchvision_resnet50_state_dict.json"


def stored_layout():
    """key -> shape of torchvision.models.resnet50().state_dict(), in order, as committed."""
    return {k: tuple(v) for k, v in json.loads(STORED_LAYOUT.read_text())["keys"].items()}


def torchvision_layout():
    """torchvision's own ResNet-50 layout where torchvision imports, else the stored key list."""
    try:
        import torchvision
    except ImportError:
        return stored_layout(), "stored"
    return {k: tuple(v.shape) for k, v in torchvision.models.resnet50().state_dict().items()}, "torchvision"


def test_resnet50_scorer_has_torchvisions_layout():
    expected, source = torchvision_layout()
    own = {k: tuple(v.shape) for k, v in resnet50().state_dict().items()}
    assert list(own) == list(expected), source  # same names, same order
    assert own == expected, source
    assert len(expected) == 320 and expected["fc.weight"] == (1000, 2048)
    if source == "torchvision":  # the stored list is torchvision's too
        assert stored_layout() == expected


def torchvision_style_file(path: Path, *, drop_step_counters: bool = False) -> dict:
    """A randomly initialised ResNet-50 state_dict built from the stored torchvision layout alone (not from this
    package's network), saved as torchvision publishes its weights: a bare state_dict."""
    gen = torch.Generator().manual_seed(0)
    state = {}
    for key, shape in stored_layout().items():
        if key.endswith("num_batches_tracked"):
            if drop_step_counters:
                continue
            state[key] = torch.tensor(0)
        elif key.endswith("running_var"):
            state[key] = torch.rand(shape, generator=gen) + 0.5
        else:
            state[key] = torch.randn(shape, generator=gen) * 0.05
    torch.save(state, path)
    return state


@pytest.mark.parametrize("drop_step_counters", [False, True])
def test_a_torchvision_layout_file_loads_as_saved(tmp_path, drop_step_counters):
    path = tmp_path / "resnet50-random.pth"
    state = torchvision_style_file(path, drop_step_counters=drop_step_counters)
    assert isinstance(torch.load(path, weights_only=True), dict)  # tensors only: loads without running code
    model = load_scorer("resnet50", path, 1000)
    loaded = model.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in state.items())
    with torch.no_grad():
        logits = model.eval()(torch.randn(2, 3, 64, 64))
    assert logits.shape == (2, 1000) and torch.isfinite(logits).all()


def test_a_file_that_does_not_fit_says_which_file_fits(tmp_path):
    wrong = tmp_path / "resnet18.pth"
    torch.save(resnet18().state_dict(), wrong)
    with pytest.raises(CheckpointError) as info:
        load_scorer("resnet50", wrong, 1000)
    message = str(info.value)
    assert f"{wrong}: does not fit resnet50 with 1000 classes" in message
    assert TORCHVISION_MODELS_URL in message and all(name in message for name in TORCHVISION_RESNET50_FILES)

    junk = tmp_path / "notes.pth"
    junk.write_text("not a checkpoint")
    with pytest.raises(CheckpointError, match="notes.pth.*resnet50-11ad3fa6.pth"):
        load_scorer("resnet50", junk, 1000)


def error_line(capsys) -> str:
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    return err.strip()


def says_where_the_weights_come_from(line: str) -> bool:
    return TORCHVISION_MODELS_URL in line and all(f"{name} ({entry})" in line
                                                   for name, entry in TORCHVISION_RESNET50_FILES.items())


def test_score_imagenet_without_a_usable_checkpoint(imagenet_sample_dir, tmp_path, capsys, monkeypatch):
    def forbidden(*args, **kwargs):
        pytest.fail("scoring started before the arguments were checked")

    monkeypatch.setattr(score_run, "score_to_files", forbidden)
    base = ["--dataset", "imagenet", "--data-dir", str(imagenet_sample_dir), "--out", str(tmp_path / "e.txt")]
    assert score.main(base) == 2
    line = error_line(capsys)
    assert line.startswith("error: --checkpoint is required: for imagenet pass") and says_where_the_weights_come_from(line)

    assert score.main(base + ["--checkpoint", str(tmp_path / "resnet50.pth")]) == 2
    line = error_line(capsys)
    assert line.startswith(f"error: --checkpoint {tmp_path / 'resnet50.pth'}: checkpoint does not exist; ")
    assert says_where_the_weights_come_from(line)


def test_score_imagenet_with_a_misfitting_file_fails_before_the_data_loads(imagenet_sample_dir, tmp_path, capsys,
                                                                          monkeypatch):
    def forbidden(*args, **kwargs):
        pytest.fail("the data set was loaded before the checkpoint was checked")

    monkeypatch.setattr(score_run, "load_dataset", forbidden)
    wrong = tmp_path / "resnet18-f37072fd.pth"
    torch.save(resnet18().state_dict(), wrong)
    assert score.main(["--dataset", "imagenet", "--data-dir", str(imagenet_sample_dir), "--checkpoint", str(wrong),
                       "--out", str(tmp_path / "e.txt"), "--no-progress", "--device", "cpu"]) == 2
    line = error_line(capsys)
    assert "does not fit resnet50 with 1000 classes" in line and says_where_the_weights_come_from(line)
    assert not (tmp_path / "e.txt").exists()


def test_train_scorer_sends_imagenet_to_torchvisions_weights(tmp_path, capsys):
    assert train_scorer.main(["--dataset", "imagenet", "--out", str(tmp_path / "s.th")]) == 2
    line = error_line(capsys)
    assert "train_scorer trains the CIFAR/SVHN scorers" in line and "proxynas_fast.score --dataset imagenet" in line
    assert says_where_the_weights_come_from(line)
    assert train_scorer.main(["--dataset", "mnist", "--out", str(tmp_path / "s.th")]) == 2
    assert error_line(capsys) == "error: --dataset mnist: choose one of cifar10, cifar100, svhn"
    assert not list(tmp_path.iterdir())


def test_help_names_torchvisions_files():
    for text in (score.build_parser().format_help(), build_parser().format_help()):
        flat = "".join(text.split())  # argparse wraps lines
        assert "".join(TORCHVISION_MODELS_URL.split()) in flat
        assert all(name in flat for name in TORCHVISION_RESNET50_FILES)
    assert "torchvision'spretrainedResNet-50" in "".join(train_scorer.build_parser().format_help().split())


def test_search_imagenet_with_an_absent_or_misfitting_scorer(imagenet_sample_dir, tmp_path, capsys):
    from proxynas_fast.search.__main__ import main as search_main

    wrong = tmp_path / "resnet18.pth"
    torch.save(resnet18().state_dict(), wrong)
    for checkpoint, expected in ((tmp_path / "absent.pth", "does not exist; for imagenet pass"),
                                 (wrong, "does not fit resnet50 with 1000 classes")):
        out = tmp_path / f"run-{checkpoint.stem}"
        assert search_main(["--preset", "imagenet", "--data-dir", str(imagenet_sample_dir), "--scorer-checkpoint",
                            str(checkpoint), "--out", str(out), "--device", "cpu", "--no-progress"]) == 2
        err = capsys.readouterr().err
        line = [t for t in err.splitlines() if t.startswith("error: ")]
        assert len(line) == 1 and err.rstrip().endswith(line[0]), err
        assert "--scorer-checkpoint" in line[0] and expected in line[0], line[0]
        assert says_where_the_weights_come_from(line[0])
        assert not (out / "entropy.txt").exists()
