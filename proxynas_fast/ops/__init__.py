"""Custom operators. Each has a compiled kernel (CPU, CUDA) and a pure-PyTorch reference fallback."""
from .dw_conv2d import dw_conv2d, dw_conv2d_reference
from .entropy_histogram import (entropy_histogram, entropy_histogram_reference, make_log10_edges,
                                softmax_entropy_f64)
from .mixed_node import channel_affine_combine, channel_dot_sums, channel_moments, channel_weighted_sum
from .pool2d import pool2d, pool2d_backward, pool2d_reference
from .pw_conv2d import pw_conv2d, pw_conv2d_groups, pw_conv2d_groups_reference, pw_conv2d_reference

__all__ = ["entropy_histogram", "entropy_histogram_reference", "make_log10_edges", "softmax_entropy_f64", "dw_conv2d",
           "dw_conv2d_reference", "channel_affine_combine", "channel_dot_sums", "channel_moments",
           "channel_weighted_sum", "pool2d", "pool2d_backward", "pool2d_reference", "pw_conv2d",
           "pw_conv2d_groups", "pw_conv2d_groups_reference", "pw_conv2d_reference"]
