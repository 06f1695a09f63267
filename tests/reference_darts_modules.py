"""A stand-in for the reference DARTS code as a user has it: the search `Network` as nn.Modules, its `Architect`
and the body of its search loop (`train_search.train`), written here from the reference's published behaviour.

Nothing here imports proxynas_fast. What matters for the drop-in tests is behaviour, stated once here:

* the layout (module tree, hence state_dict keys; checked against `reference_darts_functional.reference_layout`)
  and the construction order, which fixes what building a network draws from the global RNG: PyTorch's default
  init of each convolution / linear layer in construction order, then `1e-3 * torch.randn(k, num_ops)` for
  `alphas_normal` and `alphas_reduce`, plain leaf tensors (not Parameters) also listed in `_arch_parameters`;
* `new()` builds a fresh network of the same size on the CPU (moved to the GPU when the model is there) and
  copies the alphas in: every call draws as above;
* `genotype()` keeps, per node, the two inputs whose strongest non-'none' op weighs most, and prints its concat as
  `range(2, 6)`;
* the Architect: Adam (betas 0.5, 0.999) on the alphas; second order through the unrolled model
  `new()` + `load_state_dict` at w' = w - eta * (momentum * buf + (dL/dw + wd * w)), the Hessian-vector product
  by central differences with R = 0.01 / ||v||, the weights moved by +R v, -2R v, +R v in place;
* the loop: per training batch, one batch of the architecture half from a *new* iterator of its DataLoader
  (`next(iter(valid_queue))`: a fresh sampler permutation from the global RNG each step), the architecture step,
  then zero_grad, forward, backward, clip 5, SGD step.
"""
from __future__ import annotations

from collections import namedtuple

import torch
import torch.nn as nn
import torch.nn.functional as F

Genotype = namedtuple("Genotype", "normal normal_concat reduce reduce_concat")  # as in the reference genotypes.py
OP_NAMES = ["none", "max_pool_3x3", "avg_pool_3x3", "skip_connect",
            "sep_conv_3x3", "sep_conv_5x5", "dil_conv_3x3", "dil_conv_5x5"]


# --------------------------------------------------------------------------- operations
class Zero(nn.Module):
    def __init__(self, stride):
        super().__init__()
        self.stride = stride

    def forward(self, x):
        return x.mul(0.0) if self.stride == 1 else x[:, :, ::self.stride, ::self.stride].mul(0.0)


class FactorizedReduce(nn.Module):
    def __init__(self, C_in, C_out):
        super().__init__()
        self.relu = nn.ReLU(inplace=False)
        self.conv_1 = nn.Conv2d(C_in, C_out // 2, 1, stride=2, padding=0, bias=False)
        self.conv_2 = nn.Conv2d(C_in, C_out // 2, 1, stride=2, padding=0, bias=False)
        self.bn = nn.BatchNorm2d(C_out, affine=False)

    def forward(self, x):
        x = self.relu(x)
        return self.bn(torch.cat([self.conv_1(x), self.conv_2(x[:, :, 1:, 1:])], dim=1))


class ReLUConvBN(nn.Module):
    def __init__(self, C_in, C_out):
        super().__init__()
        self.op = nn.Sequential(nn.ReLU(inplace=False), nn.Conv2d(C_in, C_out, 1, bias=False),
                                nn.BatchNorm2d(C_out, affine=False))

    def forward(self, x):
        return self.op(x)


class SepConv(nn.Module):
    def __init__(self, C, k, stride):
        super().__init__()
        self.op = nn.Sequential(
            nn.ReLU(inplace=False), nn.Conv2d(C, C, k, stride, k // 2, groups=C, bias=False),
            nn.Conv2d(C, C, 1, bias=False), nn.BatchNorm2d(C, affine=False),
            nn.ReLU(inplace=False), nn.Conv2d(C, C, k, 1, k // 2, groups=C, bias=False),
            nn.Conv2d(C, C, 1, bias=False), nn.BatchNorm2d(C, affine=False))

    def forward(self, x):
        return self.op(x)


class DilConv(nn.Module):
    def __init__(self, C, k, stride):
        super().__init__()
        self.op = nn.Sequential(
            nn.ReLU(inplace=False), nn.Conv2d(C, C, k, stride, k - 1, dilation=2, groups=C, bias=False),
            nn.Conv2d(C, C, 1, bias=False), nn.BatchNorm2d(C, affine=False))

    def forward(self, x):
        return self.op(x)


def make_op(name, C, stride):
    if name == "none":
        return Zero(stride)
    if name == "max_pool_3x3":
        return nn.MaxPool2d(3, stride=stride, padding=1)
    if name == "avg_pool_3x3":
        return nn.AvgPool2d(3, stride=stride, padding=1, count_include_pad=False)
    if name == "skip_connect":
        return nn.Identity() if stride == 1 else FactorizedReduce(C, C)
    k = int(name[-1])
    return SepConv(C, k, stride) if name.startswith("sep") else DilConv(C, k, stride)


# --------------------------------------------------------------------------- network
class MixedOp(nn.Module):
    def __init__(self, C, stride):
        super().__init__()
        self._ops = nn.ModuleList()
        for name in OP_NAMES:
            op = make_op(name, C, stride)
            if "pool" in name:
                op = nn.Sequential(op, nn.BatchNorm2d(C, affine=False))
            self._ops.append(op)

    def forward(self, x, weights):
        return sum(w * op(x) for w, op in zip(weights, self._ops))


class Cell(nn.Module):
    def __init__(self, steps, multiplier, C_prev_prev, C_prev, C, reduction, reduction_prev):
        super().__init__()
        self.reduction = reduction
        self.preprocess0 = FactorizedReduce(C_prev_prev, C) if reduction_prev else ReLUConvBN(C_prev_prev, C)
        self.preprocess1 = ReLUConvBN(C_prev, C)
        self._steps, self._multiplier = steps, multiplier
        self._ops = nn.ModuleList()
        for i in range(steps):
            for j in range(2 + i):
                self._ops.append(MixedOp(C, 2 if reduction and j < 2 else 1))

    def forward(self, s0, s1, weights):
        states = [self.preprocess0(s0), self.preprocess1(s1)]
        offset = 0
        for _ in range(self._steps):
            s = sum(self._ops[offset + j](h, weights[offset + j]) for j, h in enumerate(states))
            offset += len(states)
            states.append(s)
        return torch.cat(states[-self._multiplier:], dim=1)


class Network(nn.Module):
    def __init__(self, C, num_classes, layers, criterion, steps=4, multiplier=4, stem_multiplier=3):
        super().__init__()
        self._C, self._num_classes, self._layers = C, num_classes, layers
        self._criterion = criterion
        self._steps, self._multiplier = steps, multiplier
        C_curr = stem_multiplier * C
        self.stem = nn.Sequential(nn.Conv2d(3, C_curr, 3, padding=1, bias=False), nn.BatchNorm2d(C_curr))
        C_prev_prev, C_prev, C_curr = C_curr, C_curr, C
        self.cells = nn.ModuleList()
        reduction_prev = False
        for i in range(layers):
            reduction = i in (layers // 3, 2 * layers // 3)
            if reduction:
                C_curr *= 2
            self.cells.append(Cell(steps, multiplier, C_prev_prev, C_prev, C_curr, reduction, reduction_prev))
            reduction_prev = reduction
            C_prev_prev, C_prev = C_prev, multiplier * C_curr
        self.global_pooling = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(C_prev, num_classes)
        k = sum(2 + i for i in range(steps))
        self.alphas_normal = (1e-3 * torch.randn(k, len(OP_NAMES))).requires_grad_(True)
        self.alphas_reduce = (1e-3 * torch.randn(k, len(OP_NAMES))).requires_grad_(True)
        self._arch_parameters = [self.alphas_normal, self.alphas_reduce]

    def new(self):
        device = self.alphas_normal.device
        model_new = Network(self._C, self._num_classes, self._layers, self._criterion).to(device)
        for x, y in zip(model_new.arch_parameters(), self.arch_parameters()):
            x.data.copy_(y.data)
        return model_new

    def forward(self, x):
        s0 = s1 = self.stem(x)
        for cell in self.cells:
            alphas = self.alphas_reduce if cell.reduction else self.alphas_normal
            s0, s1 = s1, cell(s0, s1, F.softmax(alphas, dim=-1))
        out = self.global_pooling(s1)
        return self.classifier(out.view(out.size(0), -1))

    def _loss(self, x, target):
        return self._criterion(self(x), target)

    def arch_parameters(self):
        return self._arch_parameters

    def genotype(self):
        none = OP_NAMES.index("none")

        def parse(W):
            gene, start = [], 0
            for i in range(self._steps):
                rows = W[start:start + 2 + i]
                edges = sorted(range(i + 2), key=lambda x: -max(rows[x][k] for k in range(len(rows[x])) if k != none))[:2]
                for j in edges:
                    k_best = None
                    for k in range(len(rows[j])):
                        if k != none and (k_best is None or rows[j][k] > rows[j][k_best]):
                            k_best = k
                    gene.append((OP_NAMES[k_best], j))
                start += 2 + i
            return gene

        concat = range(2 + self._steps - self._multiplier, self._steps + 2)
        return Genotype(normal=parse(F.softmax(self.alphas_normal, dim=-1).detach().cpu().numpy()),
                        normal_concat=concat,
                        reduce=parse(F.softmax(self.alphas_reduce, dim=-1).detach().cpu().numpy()),
                        reduce_concat=concat)


# --------------------------------------------------------------------------- architect
def _concat(xs):
    return torch.cat([x.reshape(-1) for x in xs])


class Architect:
    def __init__(self, model, args):
        self.network_momentum = args.momentum
        self.network_weight_decay = args.weight_decay
        self.model = model
        self.optimizer = torch.optim.Adam(self.model.arch_parameters(), lr=args.arch_learning_rate,
                                          betas=(0.5, 0.999), weight_decay=args.arch_weight_decay)

    def _compute_unrolled_model(self, input, target, eta, network_optimizer):
        loss = self.model._loss(input, target)
        theta = _concat(self.model.parameters()).detach()
        try:
            moment = _concat(network_optimizer.state[v]["momentum_buffer"]
                             for v in self.model.parameters()).mul_(self.network_momentum)
        except KeyError:
            moment = torch.zeros_like(theta)
        dtheta = _concat(torch.autograd.grad(loss, self.model.parameters())).detach() \
            + self.network_weight_decay * theta
        return self._construct_model_from_theta(theta.sub(moment + dtheta, alpha=eta))

    def step(self, input_train, target_train, input_valid, target_valid, eta, network_optimizer, unrolled):
        self.optimizer.zero_grad()
        if unrolled:
            self._backward_step_unrolled(input_train, target_train, input_valid, target_valid, eta,
                                         network_optimizer)
        else:
            self.model._loss(input_valid, target_valid).backward()
        self.optimizer.step()

    def _backward_step_unrolled(self, input_train, target_train, input_valid, target_valid, eta,
                                network_optimizer):
        unrolled_model = self._compute_unrolled_model(input_train, target_train, eta, network_optimizer)
        unrolled_model._loss(input_valid, target_valid).backward()
        dalpha = [v.grad for v in unrolled_model.arch_parameters()]
        vector = [v.grad.detach() for v in unrolled_model.parameters()]
        implicit = self._hessian_vector_product(vector, input_train, target_train)
        for g, ig in zip(dalpha, implicit):
            g.data.sub_(ig.data, alpha=eta)
        for v, g in zip(self.model.arch_parameters(), dalpha):
            if v.grad is None:
                v.grad = g.detach().clone()
            else:
                v.grad.data.copy_(g.data)

    def _construct_model_from_theta(self, theta):
        model_new = self.model.new()
        model_dict = self.model.state_dict()
        params, offset = {}, 0
        for k, v in self.model.named_parameters():
            n = v.numel()
            params[k] = theta[offset:offset + n].view(v.size())
            offset += n
        assert offset == len(theta)
        model_dict.update(params)
        model_new.load_state_dict(model_dict)
        return model_new

    def _hessian_vector_product(self, vector, input, target, r=1e-2):
        R = float(r / _concat(vector).norm())
        for p, v in zip(self.model.parameters(), vector):
            p.data.add_(v, alpha=R)
        grads_p = torch.autograd.grad(self.model._loss(input, target), self.model.arch_parameters())
        for p, v in zip(self.model.parameters(), vector):
            p.data.sub_(v, alpha=2 * R)
        grads_n = torch.autograd.grad(self.model._loss(input, target), self.model.arch_parameters())
        for p, v in zip(self.model.parameters(), vector):
            p.data.add_(v, alpha=R)
        return [(x - y).div_(2 * R) for x, y in zip(grads_p, grads_n)]


# --------------------------------------------------------------------------- search loop
def train(train_queue, valid_queue, model, architect, criterion, optimizer, lr, unrolled, grad_clip=5.0):
    """The body of the reference `train_search.train` (device moves and meters left out); returns the losses."""
    losses = []
    for step, (input, target) in enumerate(train_queue):
        model.train()
        input_search, target_search = next(iter(valid_queue))
        architect.step(input, target, input_search, target_search, lr, optimizer, unrolled=unrolled)
        optimizer.zero_grad()
        logits = model(input)
        loss = criterion(logits, target)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        optimizer.step()
        losses.append(loss.item())
    return losses
