"""mmattn's compiled operators (``torch.ops.mmattn``) and their public Python API.

This package imports torch only. When ``mmattn._C`` is not built, :func:`na2d` and
:func:`ghost_head_aggregate` fall back to the plain-PyTorch references (logged once).
"""
from ._ext import capturing_graph, has_compiled_ops, has_cuda_kernels
from .ghost_head import ghost_head_aggregate, ghost_head_softmax_aggregate
from .grouped_conv import grouped_conv2d, hadamard_conv_gelu
from .neighborhood import concat_relative_embedding, na2d, na2d_split_rpe
from .reference import ghost_head_aggregate_reference, na2d_reference

__all__ = ['na2d', 'na2d_split_rpe', 'concat_relative_embedding', 'ghost_head_aggregate',
           'ghost_head_softmax_aggregate', 'grouped_conv2d', 'hadamard_conv_gelu',
           'na2d_reference', 'ghost_head_aggregate_reference', 'has_compiled_ops', 'has_cuda_kernels', 'capturing_graph']
