"""The batched ImageNet transforms (loaders/batch_augment.py) against torchvision's documented sampling and PIL's
colour ops: KS tests on the crop and jitter draws, per-op outputs on real images within rounding of PIL's."""
from __future__ import annotations

import colorsys
import itertools
import math

import numpy as np
import pytest
import torch
from PIL import Image, ImageEnhance
from scipy import stats

from proxynas_fast.data import load_dataset
from proxynas_fast.loaders.batch_augment import (TrainParams, adjust_brightness, adjust_contrast, adjust_hue,
                                                 adjust_saturation, color_jitter, draw_train_params, grouping_index,
                                                 resample_boxes, sample_crop_boxes)
from proxynas_fast.loaders.imagenet_base import JITTER
from proxynas_fast.loaders.imagenet_pil import random_resized_crop_box

pytestmark = pytest.mark.usefixtures("single_thread")
P_MIN = 1e-3  # a correct sampler fails a KS test at this level once in a thousand runs


def _reference_boxes(height, width, count, seed):
    """torchvision's RandomResizedCrop.get_params as documented, one draw at a time (imagenet_pil's version)."""
    rng = np.random.default_rng(seed)
    return np.array([random_resized_crop_box(width, height, rng) for _ in range(count)], dtype=np.float64)


@pytest.mark.parametrize("height,width", [(160, 160), (375, 500), (60, 600)])
def test_crop_boxes_follow_torchvision_sampling(height, width):
    count = 20000
    ours = sample_crop_boxes(count, height, width, torch.Generator().manual_seed(1)).numpy()
    top, left, h, w = ours.T
    assert (top >= 0).all() and (left >= 0).all() and (top + h <= height).all() and (left + w <= width).all()
    assert np.array_equal(ours, np.round(ours))  # whole pixels, as torchvision
    ref_left, ref_top, ref_w, ref_h = _reference_boxes(height, width, count, 2).T
    area = height * width
    for mine, theirs in [(h * w / area, ref_h * ref_w / area), (w / h, ref_w / ref_h),
                         (top / np.maximum(height - h, 1), ref_top / np.maximum(height - ref_h, 1))]:
        assert stats.ks_2samp(mine, theirs).pvalue > P_MIN
    # the centre fallback (after ten misses) is taken as often and lands on the same box
    full = lambda hh, ww: (hh == height) | (ww == width)  # noqa: E731
    if height * 4 < width:  # a 10:1 strip misses often
        mine_fallback, ref_fallback = full(h, w).mean(), full(ref_h, ref_w).mean()
        assert mine_fallback > 0.05 and abs(mine_fallback - ref_fallback) < 0.02
        centre = ours[full(h, w)][0]
        ref = _reference_boxes(height, width, 200, 3)
        ref_centre = ref[(ref[:, 3] == height) | (ref[:, 2] == width)][0]
        assert tuple(centre) == (ref_centre[1], ref_centre[0], ref_centre[3], ref_centre[2])


def test_jitter_factors_and_orders_follow_torchvision():
    count = 24000
    params = draw_train_params(count, 160, 160, torch.Generator().manual_seed(4), JITTER)
    for op, name in enumerate(("brightness", "contrast", "saturation")):
        low, high = max(0.0, 1 - JITTER[name]), 1 + JITTER[name]
        assert stats.kstest(params.factors[:, op].numpy(), "uniform", args=(low, high - low)).pvalue > P_MIN
    hue = JITTER["hue"]
    assert stats.kstest(params.factors[:, 3].numpy(), "uniform", args=(-hue, 2 * hue)).pvalue > P_MIN
    assert abs(params.flip.double().mean().item() - 0.5) < 0.02
    # every one of the 24 orders equally often (chi-square)
    codes = {perm: i for i, perm in enumerate(itertools.permutations(range(4)))}
    counts = np.bincount([codes[tuple(p)] for p in params.order.tolist()], minlength=24)
    assert stats.chisquare(counts).pvalue > P_MIN


@pytest.fixture(scope="module")
def real_images(imagenet_sample_dir):
    """Eight real sample pictures (one of them greyscale if the first ones hold one), 48x64 RGB."""
    dataset = load_dataset("imagenet", imagenet_sample_dir, "train")
    images = []
    for path in dataset.files[:8]:
        with Image.open(path) as image:
            images.append(image.convert("RGB").resize((64, 48), Image.Resampling.BILINEAR))
    return images


def _as_batch(images):
    return torch.from_numpy(np.stack([np.asarray(i) for i in images])).permute(0, 3, 1, 2).double()


@pytest.mark.parametrize("ours,enhance", [(adjust_brightness, ImageEnhance.Brightness),
                                          (adjust_contrast, ImageEnhance.Contrast),
                                          (adjust_saturation, ImageEnhance.Color)])
def test_colour_ops_match_pil(real_images, ours, enhance):
    factors = torch.tensor([0.6, 0.75, 0.9, 1.0, 1.1, 1.25, 1.4, 0.65], dtype=torch.float64)
    out = ours(_as_batch(real_images), factors)
    reference = _as_batch([enhance(image).enhance(f) for image, f in zip(real_images, factors.tolist())])
    difference = (out - reference).abs()
    # PIL rounds to whole levels (and its contrast mean to a whole level): within 1.5 levels everywhere
    assert difference.max().item() <= 1.5 and difference.mean().item() < 0.6


def test_hue_matches_an_hsv_round_trip(real_images):
    x = _as_batch(real_images[:3]).float()
    shifts = torch.tensor([0.2, -0.13, 0.5])
    out = adjust_hue(x.clone(), shifts)
    pixels = x.permute(0, 2, 3, 1).reshape(3, -1, 3).numpy() / 255
    expected = np.empty_like(pixels)
    for i, shift in enumerate(shifts.tolist()):
        for j, (r, g, b) in enumerate(pixels[i]):
            h, s, v = colorsys.rgb_to_hsv(r, g, b)
            expected[i, j] = colorsys.hsv_to_rgb((h + shift) % 1.0, s, v)
    got = out.permute(0, 2, 3, 1).reshape(3, -1, 3).numpy() / 255
    assert np.abs(got - expected).max() < 1e-4


def test_resample_matches_pil_crop_then_resize(real_images):
    x = _as_batch(real_images[:5]).float()
    boxes = torch.tensor([[0, 0, 48, 64], [5, 7, 30, 22], [10, 3, 17, 40], [1, 20, 40, 40], [0, 0, 48, 64]],
                         dtype=torch.float64)
    flip = torch.tensor([False, True, False, True, True])
    sizes = [96, 96, 96, 96, 64]  # upsampling boxes, and an equal-size one
    for i, image in enumerate(real_images[:5]):
        out = resample_boxes(x[i:i + 1], boxes[i:i + 1], sizes[i], flip[i:i + 1])[0]
        top, left, h, w = (int(v) for v in boxes[i].tolist())
        crop = image.crop((left, top, left + w, top + h)).resize((sizes[i], sizes[i]), Image.Resampling.BILINEAR)
        if flip[i]:
            crop = crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        reference = torch.from_numpy(np.array(crop)).permute(2, 0, 1).float()
        difference = (out - reference).abs()  # PIL rounds to whole levels (in fixed point)
        assert difference.max().item() < 1.01, (i, difference.max().item())


def _one_at_a_time(x, factors, order):
    functions = (adjust_brightness, adjust_contrast, adjust_saturation, adjust_hue)
    out = []
    for i in range(x.shape[0]):
        image = x[i:i + 1].clone()
        for op in order[i].tolist():
            image = functions[op](image, factors[i:i + 1, op])
        out.append(image)
    return torch.cat(out)


@pytest.mark.parametrize("arranged", [True, False])
def test_color_jitter_applies_each_images_own_order(real_images, arranged):
    x = _as_batch(real_images).float()
    params = draw_train_params(len(x), 48, 64, torch.Generator().manual_seed(7), JITTER)
    if arranged:
        index = grouping_index(params)
        params = TrainParams(params.boxes[index], params.flip[index], params.factors[index], params.order[index])
        x = x[index]
    assert len({tuple(o) for o in params.order.tolist()}) > 1
    expected = _one_at_a_time(x, params.factors.float(), params.order)
    got = color_jitter(x.clone(), params.factors, params.order)
    assert torch.allclose(got, expected, atol=1e-3)
    assert not math.isclose(got.sum().item(), x.sum().item())
