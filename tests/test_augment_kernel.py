"""The fused train-augmentation kernel (`proxynas_fast::augment_crops`) against its reference, the tensor-op path of
loaders/batch_augment.py (`train_batch_tensor_ops`), on real sample pictures decoded as the image store decodes
them: many random draws, every colour op order, extreme factors, boxes on the image borders, flips, greyscale.

Tolerance: 2e-5 after normalisation (about 1e-3 of a [0, 255] level).  Both paths run the same float32 formulas
in the same order; what differs is rounding (the contrast mean is summed in another order, sums may be vectorised
differently): a few float32 ulps of a level, 6e-6 at most over 640 random draws on the sample."""
from __future__ import annotations

import itertools
import sys
import warnings

import numpy as np
import pytest
import torch

from proxynas_fast import extension
from proxynas_fast.data import load_dataset
from proxynas_fast.loaders import batch_augment
from proxynas_fast.loaders.augment import normalization_constants
from proxynas_fast.loaders.batch_augment import (TrainParams, augment_train_batch, draw_train_params,
                                                 grouping_index, train_batch_tensor_ops)
from proxynas_fast.loaders.image_store import decode_for_store
from proxynas_fast.loaders.imagenet_base import IMAGENET_MEAN, IMAGENET_STD, JITTER
from proxynas_fast.ops import augment_crops as fused

pytestmark = [pytest.mark.usefixtures("single_thread"),
              pytest.mark.skipif(not fused.kernel_available("cpu"), reason="the extension is not built")]
TOLERANCE = 2e-5
STORED, SIZE = 160, 224


@pytest.fixture(scope="module")
def store_pixels(imagenet_sample_dir):
    """uint8 [12, 160, 160, 3]: sample pictures as the image store holds them; the last two made greyscale."""
    files = load_dataset("imagenet", imagenet_sample_dir, "train").files[:12]
    pixels = np.stack([decode_for_store(str(f), STORED) for f in files])
    grey = np.round(pixels[-2:] @ np.array([0.299, 0.587, 0.114])).astype(np.uint8)
    pixels[-2:] = grey[..., None]
    return torch.from_numpy(pixels)


@pytest.fixture(scope="module")
def constants():
    scale, shift = normalization_constants(IMAGENET_MEAN, IMAGENET_STD, "cpu")
    return scale, shift


def _both(pixels, params, constants, size=SIZE):
    scale, shift = constants
    kernel = fused.augment_crops(pixels, params.boxes, params.flip, params.factors, params.order, size, scale, shift)
    reference = train_batch_tensor_ops(pixels, params, size, scale, shift)
    return kernel, reference


def _arranged(params):
    index = grouping_index(params)
    return index, TrainParams(params.boxes[index], params.flip[index], params.factors[index], params.order[index])


@pytest.mark.parametrize("seed", range(6))
def test_kernel_matches_tensor_ops_on_random_draws(store_pixels, constants, seed):
    count = len(store_pixels)
    params = draw_train_params(count, STORED, STORED, torch.Generator().manual_seed(seed), JITTER)
    kernel, reference = _both(store_pixels, params, constants)
    assert kernel.shape == reference.shape == (count, 3, SIZE, SIZE) and kernel.dtype == torch.float32
    assert (kernel - reference).abs().max().item() < TOLERANCE
    # the draws change the pictures (the comparison is not between two untouched copies)
    plain = TrainParams(params.boxes, torch.zeros(count, dtype=torch.bool),
                        torch.tensor([[1.0, 1.0, 1.0, 0.0]], dtype=torch.float64).expand(count, 4), params.order)
    assert (fused.augment_crops(store_pixels, plain.boxes, plain.flip, plain.factors, plain.order, SIZE,
                                *constants) - kernel).abs().amax(dim=(1, 2, 3)).min().item() > 0.05


def test_kernel_matches_on_an_arranged_batch_as_the_loader_passes_it(store_pixels, constants):
    params = draw_train_params(len(store_pixels), STORED, STORED, torch.Generator().manual_seed(11), JITTER)
    index, arranged = _arranged(params)
    kernel, reference = _both(store_pixels[index], arranged, constants)
    assert (kernel - reference).abs().max().item() < TOLERANCE


@pytest.mark.parametrize("order", list(itertools.permutations(range(4))))
def test_every_op_order_with_extreme_factors(store_pixels, constants, order):
    count = len(store_pixels)
    factors = torch.tensor([[0.0, 0.0, 0.0, -0.5], [2.0, 2.0, 2.0, 0.5], [0.6, 1.4, 0.6, 0.2], [1.4, 0.6, 1.4, -0.2],
                            [1.0, 1.0, 1.0, 0.0], [3.0, 0.1, 3.0, 0.49], [0.2, 3.0, 0.0, -0.01], [1.0, 0.0, 2.5, 0.3],
                            [1.7, 1.2, 0.3, 0.1], [0.9, 2.2, 1.1, -0.4], [1.3, 0.7, 0.5, 0.25], [0.5, 1.5, 2.0, -0.3]],
                           dtype=torch.float64)[:count]
    g = torch.Generator().manual_seed(sum(o * 4 ** i for i, o in enumerate(order)))
    params = draw_train_params(count, STORED, STORED, g, JITTER)
    params = TrainParams(params.boxes, params.flip, factors, torch.tensor([order] * count, dtype=torch.int64))
    kernel, reference = _both(store_pixels, params, constants)
    assert (kernel - reference).abs().max().item() < TOLERANCE


def test_boxes_on_the_borders_flips_and_other_output_sizes(store_pixels, constants):
    boxes = torch.tensor([[0, 0, 160, 160], [0, 0, 1, 1], [159, 159, 1, 1], [0, 150, 160, 10], [150, 0, 10, 160],
                          [0, 0, 13, 160], [37, 0, 123, 91], [0, 69, 91, 91], [159, 0, 1, 160], [0, 159, 160, 1],
                          [80, 80, 80, 80], [0, 0, 160, 160]], dtype=torch.float64)
    count = len(store_pixels)
    params = draw_train_params(count, STORED, STORED, torch.Generator().manual_seed(5), JITTER)
    for flip in (torch.zeros(count, dtype=torch.bool), torch.ones(count, dtype=torch.bool)):
        for size in (SIZE, 160, 37):
            p = TrainParams(boxes, flip, params.factors, params.order)
            kernel, reference = _both(store_pixels, p, constants, size)
            assert (kernel - reference).abs().max().item() < TOLERANCE, (bool(flip[0]), size)


def test_non_square_images(imagenet_sample_dir, constants):
    from PIL import Image
    files = load_dataset("imagenet", imagenet_sample_dir, "train").files[:4]
    images = []
    for path in files:
        with Image.open(path) as image:
            images.append(np.asarray(image.convert("RGB").resize((90, 60), Image.Resampling.BILINEAR)))
    pixels = torch.from_numpy(np.stack(images))
    params = draw_train_params(4, 60, 90, torch.Generator().manual_seed(3), JITTER)
    kernel, reference = _both(pixels, params, constants, 64)
    assert (kernel - reference).abs().max().item() < TOLERANCE


def test_greyscale_images_stay_grey(store_pixels, constants):
    grey = store_pixels[-2:]
    params = draw_train_params(2, STORED, STORED, torch.Generator().manual_seed(9), JITTER)
    scale, shift = constants
    out = fused.augment_crops(grey, params.boxes, params.flip, params.factors, params.order, SIZE, scale, shift)
    levels = out * (1 / scale) + shift / scale  # back to [0, 255] levels: equal in the three channels
    assert (levels.amax(1) - levels.amin(1)).max().item() < 1e-3


def test_loader_path_uses_the_kernel_and_falls_back_with_one_warning(store_pixels, constants, monkeypatch):
    params = draw_train_params(4, STORED, STORED, torch.Generator().manual_seed(2), JITTER)
    pixels = store_pixels[:4]
    calls = []
    real = fused.augment_crops
    monkeypatch.setattr(fused, "augment_crops", lambda *a: calls.append(1) or real(*a))
    fast = augment_train_batch(pixels, params, SIZE, *constants)
    assert calls == [1]
    monkeypatch.setattr(fused, "kernel_available", lambda device: False)
    monkeypatch.setattr(extension, "_warned", set())
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        slow = augment_train_batch(pixels, params, SIZE, *constants)
        augment_train_batch(pixels, params, SIZE, *constants)
    assert calls == [1] and len([w for w in caught if "augment_crops" in str(w.message)]) == 1
    assert (fast - slow).abs().max().item() < TOLERANCE
    assert batch_augment.fused is fused


def test_bad_arguments_raise_one_clear_error(store_pixels, constants):
    params = draw_train_params(2, STORED, STORED, torch.Generator().manual_seed(1), JITTER)
    pixels = store_pixels[:2]
    outside = params.boxes.clone()
    outside[1] = torch.tensor([100.0, 0.0, 61.0, 20.0], dtype=torch.float64)
    with pytest.raises(RuntimeError, match="box 1 .* does not lie inside the 160 x 160 image"):
        fused.augment_crops(pixels, outside, params.flip, params.factors, params.order, SIZE, *constants)
    repeated = params.order.clone()
    repeated[0] = torch.tensor([0, 0, 1, 2])
    with pytest.raises(RuntimeError, match="order of image 0 is not a permutation"):
        fused.augment_crops(pixels, params.boxes, params.flip, params.factors, repeated, SIZE, *constants)
    with pytest.raises(RuntimeError, match="images must be uint8"):
        fused.augment_crops(pixels.float(), params.boxes, params.flip, params.factors, params.order, SIZE, *constants)


def test_opcheck(store_pixels, constants):
    params = draw_train_params(2, STORED, STORED, torch.Generator().manual_seed(4), JITTER)
    scale, shift = constants
    torch.library.opcheck(torch.ops.proxynas_fast.augment_crops.default,
                          (store_pixels[:2].clone(), params.boxes, params.flip, params.factors, params.order, 48,
                           scale.reshape(3), shift.reshape(3)))


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="huge-page advice is Linux's")
def test_a_large_output_starts_on_a_huge_page(store_pixels, constants):
    """A batch's output (here 7 MiB) starts on a 2 MiB boundary so that its pages can be huge ones: with 4 KiB
    pages the faults of writing it once cost more CPU time than the augmentation."""
    count = len(store_pixels)
    params = draw_train_params(count, STORED, STORED, torch.Generator().manual_seed(6), JITTER)
    out = fused.augment_crops(store_pixels, params.boxes, params.flip, params.factors, params.order, SIZE,
                              *constants)
    assert out.is_contiguous() and out.data_ptr() % (1 << 21) == 0
    small = fused.augment_crops(store_pixels[:1], params.boxes[:1], params.flip[:1], params.factors[:1],
                                params.order[:1], 32, *constants)  # under 2 MiB: a plain allocation
    assert small.shape == (1, 3, 32, 32)


def test_threads_split_the_batch_without_changing_it(store_pixels, constants):
    params = draw_train_params(len(store_pixels), STORED, STORED, torch.Generator().manual_seed(8), JITTER)
    args = (store_pixels, params.boxes, params.flip, params.factors, params.order, 96, *constants)
    one = fused.augment_crops(*args)
    torch.set_num_threads(2)  # the single_thread fixture restores the count
    assert torch.equal(fused.augment_crops(*args), one)
