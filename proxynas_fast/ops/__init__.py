"""Custom operators. Each has a compiled kernel (CPU, CUDA) and a pure-PyTorch reference fallback."""
from .entropy_histogram import (entropy_histogram, entropy_histogram_reference, make_log10_edges,
                                softmax_entropy_f64)

__all__ = ["entropy_histogram", "entropy_histogram_reference", "make_log10_edges", "softmax_entropy_f64"]
