"""entropy_histogram (one fused pass) against plain PyTorch float32 (log_softmax, entropy, log10, histc).

Run: `python -m pytest benchmarks/bench_entropy_histogram.py --benchmark-only`
Both variants run in the same session on the same 131,072 x 1000 logits; the last test prints the
ratio of their medians (goal on a 2-core CPU: >= 3x).
"""
import pytest
import torch

from proxynas_fast import extension
from proxynas_fast.ops import entropy_histogram, make_log10_edges

N, C = 131_072, 1000
LO, HI, WIDTH = -10.0, 1.0, 0.25
_medians = {}


@pytest.fixture(scope="module")
def logits():
    g = torch.Generator().manual_seed(0)
    return torch.randn(N, C, generator=g) * 3.0


def plain_pytorch(logits):
    logp = torch.log_softmax(logits, dim=1)
    entropy = -(logp.exp() * logp).sum(dim=1)
    bins = int(round((HI - LO) / WIDTH))
    counts = torch.histc(torch.log10(entropy), bins=bins, min=LO, max=HI)
    return entropy, counts


def fused(logits, edges):
    return entropy_histogram(logits, edges)


@pytest.mark.benchmark(group="entropy_histogram")
def test_plain_pytorch(benchmark, logits):
    benchmark.pedantic(plain_pytorch, args=(logits,), rounds=5, warmup_rounds=1)
    _medians["plain"] = benchmark.stats.stats.median


@pytest.mark.benchmark(group="entropy_histogram")
def test_fused_kernel(benchmark, logits):
    assert extension.has_cpu_kernels(), f"extension not built: {extension.import_error()}"
    edges = make_log10_edges(WIDTH, LO, HI - 1e-9)
    benchmark.pedantic(fused, args=(logits, edges), rounds=5, warmup_rounds=1)
    _medians["fused"] = benchmark.stats.stats.median


@pytest.mark.benchmark(group="entropy_histogram")
def test_speedup(benchmark, logits):
    if set(_medians) != {"plain", "fused"}:
        pytest.skip("run together with the two timing benchmarks above")
    ratio = _medians["plain"] / _medians["fused"]
    benchmark.extra_info["speedup"] = ratio
    benchmark.pedantic(lambda: None, rounds=1)
    print(f"\nentropy_histogram {N}x{C}: plain {_medians['plain']:.3f}s, fused {_medians['fused']:.3f}s, "
          f"speedup {ratio:.1f}x (threads={torch.get_num_threads()})")
