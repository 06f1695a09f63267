"""python -m proxynas_fast.train: train a searched cell from scratch.

  python -m proxynas_fast.train --arch DARTS_V2 --dataset cifar10 --data-dir data --out runs/darts_v2
  python -m proxynas_fast.train --arch runs/search/genotype.json --preset cpu-demo --out runs/demo
  ... --resume        continue the run in --out from its last checkpoint

Every preset value (see --preset) can be overridden by its own option.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import List, Optional

from proxynas_fast.cli_errors import resume_command, run_cli
from proxynas_fast.dependencies import refuse_missing
from proxynas_fast.run_folder import check_output_dir, hold_output
from proxynas_fast.threads import configure_threads
from proxynas_fast.data import list_datasets
from proxynas_fast.train.config import AMP_MODES, LR_SCHEDULES, PRESETS, describe_preset, make_config


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m proxynas_fast.train", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch",
                   help="a registered genotype name (see --list-archs), a genotype.json written by a search, or "
                        "that search's run folder (its genotype.json is read) (required)")
    p.add_argument("--list-archs", action="store_true", help="list the registered genotype names and exit")
    p.add_argument("--dataset", default="cifar10", choices=list_datasets())
    p.add_argument("--data-dir", default=None, help="data folder (default: $PROXYNAS_DATA, else ./data)")
    p.add_argument("--out", default=None, help="run folder (default: runs/<arch>)")
    p.add_argument("--preset", default="paper", choices=PRESETS,
                   help=f"paper: the DARTS evaluation settings; {describe_preset('cpu-demo')}")
    p.add_argument("--resume", action="store_true", help="continue from the checkpoint in --out if there is one")

    g = p.add_argument_group("network (default: from the preset)")
    g.add_argument("--init-channels", type=int)
    g.add_argument("--layers", type=int, help="number of cells")
    g.add_argument("--auxiliary", action=argparse.BooleanOptionalAction, default=None,
                   help="auxiliary head at 2/3 depth")
    g.add_argument("--auxiliary-weight", type=float)
    g.add_argument("--drop-path-prob", type=float, help="final drop-path probability (ramped from 0)")

    g = p.add_argument_group("data (default: from the preset)")
    g.add_argument("--cutout", type=int, help="cutout square side in pixels (0: off)")
    g.add_argument("--train-limit", type=int, help="train on only N examples")
    g.add_argument("--train-portion", type=float, help="train on this fraction of the training set")
    g.add_argument("--test-limit", type=int, help="evaluate on only N test examples")
    g.add_argument("--subset", choices=("random", "first"),
                   help="how limits pick examples: a seeded random subset (default) or the first N")

    g = p.add_argument_group("optimisation (default: from the preset)")
    g.add_argument("--epochs", type=int)
    g.add_argument("--batch-size", type=int)
    g.add_argument("--lr", type=float)
    g.add_argument("--lr-schedule", choices=LR_SCHEDULES)
    g.add_argument("--lr-gamma", type=float, help="step schedule: decay factor")
    g.add_argument("--lr-step", type=int, help="step schedule: epochs between decays")
    g.add_argument("--momentum", type=float)
    g.add_argument("--weight-decay", type=float)
    g.add_argument("--grad-clip", type=float, help="gradient-norm clip (0: off)")
    g.add_argument("--label-smoothing", type=float)

    g = p.add_argument_group("run")
    g.add_argument("--seed", type=int)
    g.add_argument("--device", help="auto (default), cpu, cuda, cuda:1, ...")
    g.add_argument("--amp", choices=AMP_MODES, help="autocast dtype (bf16 also works on CPU)")
    g.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None)
    g.add_argument("--deterministic", action=argparse.BooleanOptionalAction, default=None,
                   help="deterministic kernels (slower on CUDA; CPU runs are deterministic anyway)")
    g.add_argument("--eval-every", type=int, help="evaluate every N epochs (the last epoch always)")
    g.add_argument("--loader-backend", choices=("auto", "dali", "pil"),
                   help="ImageNet decoding backend (auto: DALI when installed, else PIL)")
    g.add_argument("--skip-bad-images", action=argparse.BooleanOptionalAction, default=None,
                   help="ImageNet: log and drop unreadable image files instead of stopping")
    g.add_argument("--no-progress", action="store_true",
                   help="no progress bar or progress lines (a bar on a terminal, else a line every 30 s)")
    g.add_argument("--threads", type=int, help="intra-op CPU threads (default: the cores not busy with other "
                                               "jobs, from the load average, or $OMP_NUM_THREADS if set)")
    return p


def _default_out(arch: str) -> str:
    path = Path(arch)
    if path.suffix == ".json":
        name = path.parent.name if path.stem == "genotype" and path.parent.name else path.stem
    elif path.is_dir():  # a search's run folder
        name = path.resolve().name
    else:
        name = arch
    return str(Path("runs") / (name or "run"))


def _configure_determinism(deterministic: bool, device) -> None:
    import torch

    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False
    elif device.type == "cuda":
        torch.backends.cudnn.benchmark = True


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if (status := refuse_missing("train")) is not None:
        return status
    try:
        threads = configure_threads(args.threads)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    # torch loads from here on, after the thread settings.
    from proxynas_fast.darts.genotypes import genotype_to_dict, get_genotype, list_genotypes

    if args.list_archs:
        print("\n".join(list_genotypes()))
        return 0
    if not args.arch:
        parser.error("--arch is required (a name from --list-archs, or a genotype.json)")
    print(f"threads: {threads.describe()}", file=sys.stderr, flush=True)
    from proxynas_fast.data import DatasetError
    from proxynas_fast.loaders import ImageFileError

    try:
        genotype = get_genotype(args.arch)
    except (KeyError, ValueError, FileNotFoundError) as e:
        print(f"error: --arch: {e.args[0] if isinstance(e, KeyError) else e}", file=sys.stderr)
        return 2

    overrides = {k: getattr(args, k) for k in (
        "data_dir", "init_channels", "layers", "auxiliary", "auxiliary_weight", "drop_path_prob", "cutout",
        "train_limit", "train_portion", "test_limit", "subset", "epochs", "batch_size", "lr", "lr_schedule",
        "lr_gamma", "lr_step", "momentum", "weight_decay", "grad_clip", "label_smoothing", "seed", "device",
        "amp", "channels_last", "deterministic", "eval_every", "loader_backend", "skip_bad_images")}
    if args.no_progress:
        overrides["progress"] = False
    out = args.out or _default_out(args.arch)
    try:
        cfg = make_config(args.preset, args.arch, args.dataset, out, **overrides)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2

    from proxynas_fast.train.trainer import describe_saved

    argv = sys.argv[1:] if argv is None else list(argv)
    return run_cli(lambda: _train(cfg, genotype, out, args.resume), user_errors=(
        DatasetError, ImageFileError, ValueError, FileExistsError, FileNotFoundError, ImportError),
        interrupted_message=lambda: f"{describe_saved(out)}; resume with: "
                                    f"{resume_command('proxynas_fast.train', argv)}")


def _train(cfg, genotype, out: str, resume: bool) -> int:
    """The run itself, once --out is checked and held (no other process trains into it meanwhile)."""
    import torch

    from proxynas_fast.darts.genotypes import genotype_to_dict
    from proxynas_fast.train.data import build_loaders
    from proxynas_fast.train.networks import build_network, count_parameters
    from proxynas_fast.train.trainer import Trainer, check_train_output, resolve_device

    check_output_dir(out)  # writable, before the lock file is made in it
    with hold_output(out, what="train", kind="folder"):
        # Under the lock: a run finishing between a check and the lock would be overwritten.
        check_train_output(out, resume)
        device = resolve_device(cfg.device)
        _configure_determinism(cfg.deterministic, device)
        # Weights are initialised from the seed; a resumed run overwrites them from the checkpoint.
        torch.manual_seed(cfg.seed)
        train_loader, test_loader, info = build_loaders(cfg, device)
        model = build_network(genotype, cfg.dataset, info["num_classes"], cfg.init_channels, cfg.layers,
                              cfg.auxiliary)
        meta = {"genotype": genotype_to_dict(genotype), **info}
        print(f"{cfg.arch} on {cfg.dataset}: {count_parameters(model) / 1e6:.3f}M parameters "
              f"(without auxiliary head), {info['train_examples']} train / {info['test_examples']} test "
              f"examples, device {device}, out {out}", file=sys.stderr, flush=True)
        trainer = Trainer(cfg, model, train_loader, test_loader, device, Path(out), meta)
        results = trainer.fit(resume=resume)
    print(json.dumps({k: results[k] for k in ("arch", "dataset", "params", "test_acc", "test_loss")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
