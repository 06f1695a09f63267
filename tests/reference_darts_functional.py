"""An independent, functional description of the reference DARTS / PC-DARTS search networks, for tests.

Nothing here imports proxynas_fast. The layout (state_dict key names and shapes) is written out from the
reference code's structure, and the forward pass uses torch.nn.functional only, reading every tensor from a
state_dict by its reference key. BatchNorm is evaluated in training mode (batch statistics), as during search.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Dict, Tuple

import torch
import torch.nn.functional as F

OP_NAMES = ["none", "max_pool_3x3", "avg_pool_3x3", "skip_connect",
            "sep_conv_3x3", "sep_conv_5x5", "dil_conv_3x3", "dil_conv_5x5"]
BN_EPS = 1e-5


# --------------------------------------------------------------------------- layout
def _bn_keys(prefix: str, C: int, affine: bool):
    keys = []
    if affine:
        keys += [(f"{prefix}.weight", (C,)), (f"{prefix}.bias", (C,))]
    keys += [(f"{prefix}.running_mean", (C,)), (f"{prefix}.running_var", (C,)),
             (f"{prefix}.num_batches_tracked", ())]
    return keys


def _factorized_reduce_keys(prefix, C_in, C_out):
    return ([(f"{prefix}.conv_1.weight", (C_out // 2, C_in, 1, 1)), (f"{prefix}.conv_2.weight", (C_out // 2, C_in, 1, 1))]
            + _bn_keys(f"{prefix}.bn", C_out, False))


def _relu_conv_bn_keys(prefix, C_in, C_out):
    return [(f"{prefix}.op.1.weight", (C_out, C_in, 1, 1))] + _bn_keys(f"{prefix}.op.2", C_out, False)


def _mixed_op_keys(prefix, C, stride):
    keys = []
    for i, name in enumerate(OP_NAMES):
        p = f"{prefix}._ops.{i}"
        if "pool" in name:
            keys += _bn_keys(f"{p}.1", C, False)
        elif name == "skip_connect" and stride == 2:
            keys += _factorized_reduce_keys(p, C, C)
        elif name.startswith("sep_conv"):
            k = int(name[-1])
            keys += [(f"{p}.op.1.weight", (C, 1, k, k)), (f"{p}.op.2.weight", (C, C, 1, 1))]
            keys += _bn_keys(f"{p}.op.3", C, False)
            keys += [(f"{p}.op.5.weight", (C, 1, k, k)), (f"{p}.op.6.weight", (C, C, 1, 1))]
            keys += _bn_keys(f"{p}.op.7", C, False)
        elif name.startswith("dil_conv"):
            k = int(name[-1])
            keys += [(f"{p}.op.1.weight", (C, 1, k, k)), (f"{p}.op.2.weight", (C, C, 1, 1))]
            keys += _bn_keys(f"{p}.op.3", C, False)
    return keys


def reduction_layers(layers):
    return {layers // 3, 2 * layers // 3}


def reference_layout(C: int, num_classes: int, layers: int, steps: int = 4, multiplier: int = 4,
                     stem_multiplier: int = 3, k: int = 1, imagenet: bool = False) -> "OrderedDict[str, Tuple]":
    """Key -> shape of the reference search network's state_dict (k > 1: PC-DARTS with C/k-channel ops)."""
    keys = []
    C_stem = stem_multiplier * C
    if imagenet:
        keys += [("stem0.0.weight", (C_stem // 2, 3, 3, 3))] + _bn_keys("stem0.1", C_stem // 2, True)
        keys += [("stem0.3.weight", (C_stem, C_stem // 2, 3, 3))] + _bn_keys("stem0.4", C_stem, True)
        keys += [("stem1.1.weight", (C_stem, C_stem, 3, 3))] + _bn_keys("stem1.2", C_stem, True)
    else:
        keys += [("stem.0.weight", (C_stem, 3, 3, 3))] + _bn_keys("stem.1", C_stem, True)
    C_pp, C_p, C_cur = C_stem, C_stem, C
    reduction_prev = imagenet
    for layer in range(layers):
        reduction = layer in reduction_layers(layers)
        if reduction:
            C_cur *= 2
        p = f"cells.{layer}"
        if reduction_prev:
            keys += _factorized_reduce_keys(f"{p}.preprocess0", C_pp, C_cur)
        else:
            keys += _relu_conv_bn_keys(f"{p}.preprocess0", C_pp, C_cur)
        keys += _relu_conv_bn_keys(f"{p}.preprocess1", C_p, C_cur)
        edge = 0
        for node in range(steps):
            for j in range(2 + node):
                stride = 2 if reduction and j < 2 else 1
                keys += _mixed_op_keys(f"{p}._ops.{edge}", C_cur // k, stride)
                edge += 1
        reduction_prev = reduction
        C_pp, C_p = C_p, multiplier * C_cur
    keys += [("classifier.weight", (num_classes, C_p)), ("classifier.bias", (num_classes,))]
    return OrderedDict(keys)


def random_state_dict(layout, generator: torch.Generator, dtype=torch.float64) -> Dict[str, torch.Tensor]:
    """Random tensors for a layout; BN affine weights near 1, running stats plausible (unused in training mode)."""
    sd = {}
    for key, shape in layout.items():
        if key.endswith("num_batches_tracked"):
            sd[key] = torch.tensor(7, dtype=torch.long)
        elif key.endswith("running_var"):
            sd[key] = torch.rand(shape, generator=generator, dtype=dtype) + 0.5
        elif key.endswith("running_mean"):
            sd[key] = torch.randn(shape, generator=generator, dtype=dtype) * 0.1
        elif key.endswith(".weight") and len(shape) == 1:  # affine BN scale
            sd[key] = 1.0 + 0.2 * torch.randn(shape, generator=generator, dtype=dtype)
        else:
            fan_in = max(1, int(torch.tensor(shape[1:]).prod())) if len(shape) > 1 else 4
            sd[key] = torch.randn(shape, generator=generator, dtype=dtype) / fan_in ** 0.5
    return sd


# --------------------------------------------------------------------------- forward
def _bn(sd, prefix, x):
    return F.batch_norm(x, None, None, sd.get(f"{prefix}.weight"), sd.get(f"{prefix}.bias"),
                        training=True, eps=BN_EPS)


def _factorized_reduce(sd, prefix, x):
    x = F.relu(x)
    assert x.shape[2] % 2 == 0 and x.shape[3] % 2 == 0, "reference FactorizedReduce expects even sizes"
    a = F.conv2d(x, sd[f"{prefix}.conv_1.weight"], stride=2)
    b = F.conv2d(x[:, :, 1:, 1:], sd[f"{prefix}.conv_2.weight"], stride=2)
    return _bn(sd, f"{prefix}.bn", torch.cat([a, b], dim=1))


def _relu_conv_bn(sd, prefix, x):
    return _bn(sd, f"{prefix}.op.2", F.conv2d(F.relu(x), sd[f"{prefix}.op.1.weight"]))


def _candidate(sd, prefix, name, x, stride):
    C = x.shape[1]
    if name == "none":
        return x[:, :, ::stride, ::stride] * 0.0
    if name == "max_pool_3x3":
        return _bn(sd, f"{prefix}.1", F.max_pool2d(x, 3, stride, 1))
    if name == "avg_pool_3x3":
        return _bn(sd, f"{prefix}.1", F.avg_pool2d(x, 3, stride, 1, count_include_pad=False))
    if name == "skip_connect":
        return x if stride == 1 else _factorized_reduce(sd, prefix, x)
    k = int(name[-1])
    if name.startswith("sep_conv"):
        y = F.conv2d(F.relu(x), sd[f"{prefix}.op.1.weight"], stride=stride, padding=k // 2, groups=C)
        y = _bn(sd, f"{prefix}.op.3", F.conv2d(y, sd[f"{prefix}.op.2.weight"]))
        y = F.conv2d(F.relu(y), sd[f"{prefix}.op.5.weight"], stride=1, padding=k // 2, groups=C)
        return _bn(sd, f"{prefix}.op.7", F.conv2d(y, sd[f"{prefix}.op.6.weight"]))
    # dilated: dilation 2, padding keeps the size
    y = F.conv2d(F.relu(x), sd[f"{prefix}.op.1.weight"], stride=stride, padding=k - 1, dilation=2, groups=C)
    return _bn(sd, f"{prefix}.op.3", F.conv2d(y, sd[f"{prefix}.op.2.weight"]))


def _mixed(sd, prefix, x, op_weights, stride):
    out = 0
    for i, name in enumerate(OP_NAMES):
        out = out + op_weights[i] * _candidate(sd, f"{prefix}._ops.{i}", name, x, stride)
    return out


def _partial_mixed(sd, prefix, x, op_weights, stride, k):
    n = x.shape[1] // k
    y = _mixed(sd, prefix, x[:, :n], op_weights, stride)
    rest = x[:, n:] if stride == 1 else F.max_pool2d(x[:, n:], 2, 2)
    z = torch.cat([y, rest], dim=1)
    B, C, H, W = z.shape
    # shuffle: output channel i*k + g takes input channel g*(C/k) + i
    idx = [g * (C // k) + i for i in range(C // k) for g in range(k)]
    return z[:, idx]


def _node_softmax(betas, steps):
    out, s = [], 0
    for node in range(steps):
        out.append(torch.softmax(betas[s:s + 2 + node], dim=0))
        s += 2 + node
    return torch.cat(out)


def reference_forward(sd, x, alphas_normal, alphas_reduce, layers, steps=4, multiplier=4,
                      betas_normal=None, betas_reduce=None, k=1, imagenet=False):
    """Logits of the reference search network (DARTS; PC-DARTS when betas are given with k > 1)."""
    pc = betas_normal is not None
    w_normal, w_reduce = torch.softmax(alphas_normal, dim=-1), torch.softmax(alphas_reduce, dim=-1)
    if pc:
        e_normal, e_reduce = _node_softmax(betas_normal, steps), _node_softmax(betas_reduce, steps)
    if imagenet:
        s0 = _bn(sd, "stem0.1", F.conv2d(x, sd["stem0.0.weight"], stride=2, padding=1))
        s0 = _bn(sd, "stem0.4", F.conv2d(F.relu(s0), sd["stem0.3.weight"], stride=2, padding=1))
        s1 = _bn(sd, "stem1.2", F.conv2d(F.relu(s0), sd["stem1.1.weight"], stride=2, padding=1))
    else:
        s0 = s1 = _bn(sd, "stem.1", F.conv2d(x, sd["stem.0.weight"], padding=1))
    reduction_prev = imagenet
    for layer in range(layers):
        reduction = layer in reduction_layers(layers)
        p = f"cells.{layer}"
        h0 = (_factorized_reduce(sd, f"{p}.preprocess0", s0) if reduction_prev
              else _relu_conv_bn(sd, f"{p}.preprocess0", s0))
        h1 = _relu_conv_bn(sd, f"{p}.preprocess1", s1)
        W = w_reduce if reduction else w_normal
        states, edge = [h0, h1], 0
        for node in range(steps):
            total = 0
            for j, h in enumerate(states):
                stride = 2 if reduction and j < 2 else 1
                if pc:
                    E = e_reduce if reduction else e_normal
                    total = total + E[edge] * _partial_mixed(sd, f"{p}._ops.{edge}", h, W[edge], stride, k)
                else:
                    total = total + _mixed(sd, f"{p}._ops.{edge}", h, W[edge], stride)
                edge += 1
            states.append(total)
        s0, s1 = s1, torch.cat(states[-multiplier:], dim=1)
        reduction_prev = reduction
    pooled = s1.mean(dim=(2, 3))
    return F.linear(pooled, sd["classifier.weight"], sd["classifier.bias"])
