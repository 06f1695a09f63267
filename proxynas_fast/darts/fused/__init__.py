"""Fused evaluation of DARTS / PC-DARTS search cells (`backend="fused"`).

Computes exactly the function of `Cell.reference_forward` (and `PCCell.reference_forward`) from the cell's own
modules, so parameters, buffers and the state_dict are shared with the reference path; forward and backward,
in training mode (batch-statistics BatchNorm, running statistics updated like nn.BatchNorm2d) and in eval mode.

What is fused, relative to the reference (which evaluates 8 ops on each of the 14 edges independently):

* one ReLU per node, shared by the 4 convolutional candidates (and the FactorizedReduce skip) of every edge that
  reads the node; one per cell output, shared by the preprocessings of the two cells that read it
  (`relu_memo.shared_relus`, opened by the network's forward); the ReLU after a BatchNorm (the separable
  convolutions' inner one, the ImageNet stem's) folded into the kernel BatchNorm (`kernel_batch_norm`);
* the convolutional candidates of all edges reading one state run together (`branches`);
* per node, one autograd function evaluates pooling, identity, zero, every final BatchNorm (affine-free) and
  the weighted sum over candidates and incoming edges, and gives the architecture-weight gradient as a
  by-product of the BatchNorm backward sums (`mixed_node`); pooling is shared by the nodes reading a state;
* PC-DARTS's partial channels, bypass sum and channel shuffle (`pc_darts`);
* the structure of a cell is checked and laid out once (`plan`); `cell` runs the forward.

Inputs in channels_last are accepted (the cell computes in NCHW and returns NCHW); bfloat16 under torch.autocast
follows the reference's dtypes (convolutions in bfloat16, statistics and sums accumulated in float32).

The names below are the package's interface; the underscored ones are re-exported for the tests that check the
pieces one by one.
"""
from .cell import _preprocess, cell_forward, pc_cell_forward
from .kernel_batch_norm import _batch_norm_group, _BatchNormBatchStats, _count_batches, _RunningStats, batch_norm
from .mixed_node import _MixedNode, _SharedPool
from .pc_darts import _ScaledSum, _ShuffledJoin
from .plan import FusedCellError, _NodePlan, _Term, _node_index, cell_plan, drop_plan
from .relu_memo import run_sequential, shared_relu, shared_relus

__all__ = ["FusedCellError", "batch_norm", "cell_forward", "cell_plan", "drop_plan", "pc_cell_forward",
           "run_sequential", "shared_relu", "shared_relus"]
