"""Architecture-weight updates of DARTS (bi-level optimisation).

The network weights w are trained on the training half, the architecture weights alpha on the validation half.
`Architect.step` computes d L_val / d alpha and takes one Adam step (betas (0.5, 0.999)) on alpha:

* first order (`unrolled=False`): the plain gradient of L_val(w, alpha), w held fixed;
* second order (`unrolled=True`): the gradient through one virtual SGD step of the weights,
      w' = w - eta * (momentum * buf + dL_train/dw + weight_decay * w),
      grad = dL_val(w', alpha)/dalpha - eta * d2 L_train(w, alpha)/(dalpha dw) . v,    v = dL_val(w', alpha)/dw'.
  The mixed second derivative times v is the finite difference
      [dL_train(w + R v, alpha)/dalpha - dL_train(w - R v, alpha)/dalpha] / (2R),   R = 0.01 / ||v||,
  as in the DARTS paper (Liu et al., 2019, eq. 7-8).

Every forward pass runs in the model's current mode (training mode during search, so BatchNorm uses batch
statistics and the extra passes update the running statistics, as in the reference implementation).

Any network of the reference layout works: the Architect uses only `_loss(x, y)`, `arch_parameters()`,
`parameters()` (the weights are the parameters that are not architecture tensors), `state_dict()` /
`load_state_dict()` and, for `unrolled=True`, `new()`.

Random numbers. The reference builds the unrolled copy with `model.new()` on every second-order step, and
building a network draws from the global RNG (weight initialisation, alphas), which moves everything the
training loop draws afterwards (sampler permutations, the data order). This Architect builds the copy once and
refreshes it. With `replay_rng=True` (the default) it still consumes the global RNG exactly as the reference
does, one `new()`'s worth per unrolled step: via `model.advance_rng_as_new()` when the network has it (this
package's networks: the draws alone, tens of milliseconds at full size), else by calling `model.new()`. A
seeded run then replays a reference run's data order; `replay_rng=False` skips the draws (everything drawn after
the second unrolled step, such as the third step's architecture batch, then differs from a reference run's).
First-order steps draw nothing, in both.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any, List, Optional

import torch


@dataclass(frozen=True)
class SearchHyperparameters:
    """Settings of a DARTS-style search; `Architect` reads momentum, weight_decay and the arch_* fields."""

    batch_size: int
    learning_rate: float  # initial SGD learning rate of the network weights (cosine-annealed)
    learning_rate_min: float
    momentum: float
    weight_decay: float
    epochs: int
    init_channels: int
    layers: int
    grad_clip: float  # max gradient norm of the network weights
    arch_learning_rate: float
    arch_weight_decay: float
    arch_begin_epoch: int = 0  # first epoch with architecture updates (PC-DARTS warms the weights up first)
    warmup_epochs: int = 0  # linear learning-rate warm-up (PC-DARTS ImageNet, batch > 256)
    train_portion: float = 0.5  # share of the search data used for weights; the rest trains alpha
    unrolled: bool = False

    def as_dict(self) -> dict:
        return asdict(self)


# DARTS (Liu et al., 2019) CIFAR-10 search settings.
DARTS_CIFAR_SEARCH = SearchHyperparameters(
    batch_size=64, learning_rate=0.025, learning_rate_min=0.001, momentum=0.9, weight_decay=3e-4, epochs=50,
    init_channels=16, layers=8, grad_clip=5.0, arch_learning_rate=3e-4, arch_weight_decay=1e-3,
)

ARCH_ADAM_BETAS = (0.5, 0.999)
FINITE_DIFFERENCE_SCALE = 1e-2

_REQUIRED = ("momentum", "weight_decay", "arch_learning_rate", "arch_weight_decay")


def _setting(args: Any, name: str):
    if isinstance(args, Mapping):
        if name in args:
            return args[name]
    elif hasattr(args, name):
        return getattr(args, name)
    raise ValueError(f"Architect settings lack {name!r}; they need {', '.join(_REQUIRED)} "
                     f"(got {type(args).__name__})")


def _optional_setting(args: Any, name: str, default):
    try:
        return _setting(args, name)
    except ValueError:
        return default


def _flatten(tensors) -> torch.Tensor:
    return torch.cat([t.reshape(-1) for t in tensors])


def weight_parameters(model) -> List[torch.Tensor]:
    """The network weights of any search network: `parameters()` without the architecture tensors (some DARTS
    forks register the alphas as Parameters; the reference and this package do not)."""
    arch = {id(a) for a in model.arch_parameters()}
    return [p for p in model.parameters() if id(p) not in arch]


def _grad(loss, inputs) -> List[torch.Tensor]:
    """d loss / d inputs, with zeros for inputs the loss does not depend on (e.g. reduction-cell alphas of a
    network without reduction cells)."""
    grads = torch.autograd.grad(loss, inputs, allow_unused=True)
    return [torch.zeros_like(x) if g is None else g for x, g in zip(inputs, grads)]


def first_order_arch_gradients(model, input_valid, target_valid):
    """(d L_val / d alpha for each architecture tensor, the detached validation loss), the weights held fixed.
    autograd.grad rather than backward(): the weights' .grad stay untouched and their gradients are never
    computed, which the reference (whose loop zeroes them right after) pays for."""
    loss = model._loss(input_valid, target_valid)
    return _grad(loss, model.arch_parameters()), loss.detach()


def apply_arch_gradients(optimizer: torch.optim.Optimizer, arch_parameters, grads) -> None:
    """Set each architecture tensor's .grad to its gradient and take one optimiser step. An existing .grad is
    written in place, so that it stays the same tensor (a captured CUDA graph reads it at a fixed address)."""
    for alpha, grad in zip(arch_parameters, grads):
        if alpha.grad is None:
            alpha.grad = grad.detach().clone()
        else:
            alpha.grad.copy_(grad)
    optimizer.step()


class Architect:
    """Updates `model.arch_parameters()` with Adam on the validation loss.

    `model`: any network of the reference DARTS layout (see the module docstring). `args` is anything with the
    fields momentum, weight_decay (of the network's SGD), arch_learning_rate and arch_weight_decay: an argparse
    Namespace, a dataclass or a dict. `replay_rng`: consume the global RNG on unrolled steps as the reference's
    `model.new()` does (default; see the module docstring).
    """

    def __init__(self, model, args, finite_difference_scale: float = FINITE_DIFFERENCE_SCALE,
                 replay_rng: bool = True):
        self.model = model
        self.replay_rng = bool(replay_rng)
        # r in R = r / ||v||. The reference's 0.01 is large for ReLU/max-pool networks (the difference straddles
        # kinks), but it is what DARTS uses; smaller values are useful for checking the maths on smooth models.
        self.finite_difference_scale = float(finite_difference_scale)
        self.network_momentum = float(_setting(args, "momentum"))
        self.network_weight_decay = float(_setting(args, "weight_decay"))
        self.optimizer = torch.optim.Adam(
            self.model.arch_parameters(), lr=float(_setting(args, "arch_learning_rate")),
            betas=tuple(_optional_setting(args, "arch_betas", ARCH_ADAM_BETAS)),
            weight_decay=float(_setting(args, "arch_weight_decay")),
        )
        self._unrolled_model = None

    # ----- public API -----
    def step(self, input_train, target_train, input_valid, target_valid, eta: float,
             network_optimizer: Optional[torch.optim.Optimizer], unrolled: bool) -> torch.Tensor:
        """One Adam step on the architecture weights; returns the (detached) validation loss it used.

        eta is the network's current learning rate (the size of the virtual step when `unrolled`).
        """
        grads, val_loss = self.arch_gradients(input_train, target_train, input_valid, target_valid,
                                              eta, network_optimizer, unrolled)
        apply_arch_gradients(self.optimizer, self.model.arch_parameters(), grads)
        return val_loss

    def arch_gradients(self, input_train, target_train, input_valid, target_valid, eta,
                       network_optimizer, unrolled: bool):
        """(d L_val / d alpha for each architecture tensor, validation loss); nothing is updated except
        BatchNorm running statistics."""
        if unrolled:
            return self._unrolled_gradients(input_train, target_train, input_valid, target_valid,
                                            eta, network_optimizer)
        return first_order_arch_gradients(self.model, input_valid, target_valid)

    # ----- second order -----
    def _unrolled_gradients(self, input_train, target_train, input_valid, target_valid, eta, network_optimizer):
        unrolled = self._compute_unrolled_model(input_train, target_train, eta, network_optimizer)
        loss = unrolled._loss(input_valid, target_valid)
        arch = unrolled.arch_parameters()
        network_weights = weight_parameters(unrolled)
        grads = _grad(loss, arch + network_weights)
        dalpha, vector = grads[: len(arch)], grads[len(arch):]
        implicit = self._hessian_vector_product(vector, input_train, target_train)
        return [g - eta * ig for g, ig in zip(dalpha, implicit)], loss.detach()

    def _momentum_term(self, network_weights, network_optimizer) -> List[torch.Tensor]:
        """momentum * SGD momentum buffer, per weight (zeros before the optimiser's first step)."""
        terms = []
        for w in network_weights:
            state = network_optimizer.state.get(w, {}) if network_optimizer is not None else {}
            buf = state.get("momentum_buffer")
            terms.append(torch.zeros_like(w) if buf is None else self.network_momentum * buf)
        return terms

    def _compute_unrolled_model(self, input_train, target_train, eta, network_optimizer):
        """A copy of the model whose weights took one virtual SGD step (with momentum and weight decay) on the
        training batch; the architecture weights are copied and are leaves of the copy."""
        network_weights = weight_parameters(self.model)
        loss = self.model._loss(input_train, target_train)
        dtheta = _grad(loss, network_weights)
        moments = self._momentum_term(network_weights, network_optimizer)
        unrolled = self._unrolled_copy()
        with torch.no_grad():
            for dst, w, g, m in zip(weight_parameters(unrolled), network_weights, dtheta, moments):
                # Summed in the reference's order: moment + (gradient + weight decay).
                dst.copy_(w - eta * (m + (g + self.network_weight_decay * w)))
        return unrolled

    def _unrolled_copy(self):
        """`model.new()` built once and refreshed each step (weights, buffers, alphas, backend) instead of a new
        network per step as in the reference; same values, no repeated construction. The global RNG advances as
        the reference's per-step `new()` would when `replay_rng` (see the module docstring)."""
        model = self.model
        ref = next(model.parameters())
        cached = self._unrolled_model
        stale = cached is None or next(cached.parameters()).device != ref.device \
            or next(cached.parameters()).dtype != ref.dtype
        can_replay = callable(getattr(model, "advance_rng_as_new", None))
        if stale or (self.replay_rng and not can_replay):
            cached = self._unrolled_model = model.new()  # draws what the reference's new() draws: it is one
        elif self.replay_rng:
            model.advance_rng_as_new()
        cached.load_state_dict(model.state_dict())
        with torch.no_grad():
            for dst, src in zip(cached.arch_parameters(), model.arch_parameters()):
                dst.copy_(src)
        if hasattr(model, "backend"):
            cached.backend = model.backend
        cached.train(model.training)
        return cached

    def _hessian_vector_product(self, vector, input_train, target_train, r: Optional[float] = None):
        """Central finite difference for d2 L_train / (dalpha dw) . vector at the model's current weights."""
        r = self.finite_difference_scale if r is None else r
        network_weights = weight_parameters(self.model)
        arch = self.model.arch_parameters()
        # R = r / ||v|| stays on the device (no host sync per unrolled step, so the step can be captured in a CUDA
        # graph). Computed in float64 and rounded once to the weights' dtype, as a Python-float R would be. A zero
        # v (the validation loss is flat in w) gets a finite R, leaves w as is, and its result is zeroed below: no
        # second-order correction (a NaN norm still gives NaN).
        norm = _flatten(vector).norm()
        tiny = torch.finfo(norm.dtype).tiny
        R = (torch.full_like(norm, r, dtype=torch.float64) / norm.double().clamp_min(tiny)).to(norm.dtype)
        saved = [w.detach().clone() for w in network_weights]
        try:
            with torch.no_grad():
                for w, v in zip(network_weights, vector):
                    w.addcmul_(v, R)
            grads_pos = _grad(self.model._loss(input_train, target_train), arch)
            with torch.no_grad():
                for w, w0, v in zip(network_weights, saved, vector):
                    w.copy_(w0).addcmul_(v, R, value=-1)
            grads_neg = _grad(self.model._loss(input_train, target_train), arch)
        finally:
            # Put the exact weights back (also when a forward pass raised).
            with torch.no_grad():
                for w, w0 in zip(network_weights, saved):
                    w.copy_(w0)
        flat = norm == 0
        return [torch.where(flat, 0.0, (p - n) / (2 * R)) for p, n in zip(grads_pos, grads_neg)]
