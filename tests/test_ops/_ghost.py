"""What the ghost-head op tests share: tolerances and the pixel-loop oracle of
``specs/ops.md`` section 2 (``test_ghost_head.py``, ``test_ghost_softmax.py``)."""
import torch

# Tolerances, per dtype.
# float64: a few ulps of O(1) sums of k*k terms.
FP64_TOL = dict(rtol=1e-10, atol=1e-12)
# float32 against a float64 reference: the spec's 1e-5 relative agreement.
FP32_TOL = dict(rtol=1e-5, atol=1e-5)
# d_ghost_mul and d_ghost_add are reductions over B*H*W pixels: their fp32 rounding error grows
# with sqrt(B*H*W) * |term|, so their atol is scaled with the largest entry.
FP32_REDUCTION_RTOL = 1e-5
FP32_REDUCTION_ATOL_PER_MAX = 1e-5
# bfloat16 inputs computed in fp32 and rounded to bf16 (relative rounding 2**-8 = 3.9e-3), against
# the fp32 result on the same upcast inputs.
BF16_TOL = dict(rtol=2e-2, atol=2e-2)
# float64 gradcheck: torch's defaults.
GRADCHECK = dict(eps=1e-6, atol=1e-5, rtol=1e-3)


def ghost_oracle(v, attn, ghost_mul, ghost_add, kernel_size, dilation):
    """``specs/ops.md`` section 2, literally, one output element at a time (float64)."""
    B, C, H, W = v.shape
    G, ks, r = attn.shape[1], kernel_size, (kernel_size - 1) // 2
    out = torch.zeros(B, C, H, W, dtype=torch.float64)
    for b in range(B):
        for c in range(C):
            g = c // (C // G)
            for i in range(H):
                for j in range(W):
                    total = 0.0
                    for u in range(ks):
                        for w in range(ks):
                            pi, pj = i + (u - r) * dilation, j + (w - r) * dilation
                            if not (0 <= pi < H and 0 <= pj < W):
                                continue  # outside the image: contributes zero
                            weight = float(attn[b, g, u * ks + w, i, j])
                            if ghost_mul is not None:
                                weight *= float(ghost_mul[c, u, w])
                            if ghost_add is not None:
                                weight += float(ghost_add[c, u, w])
                            total += float(v[b, c, pi, pj]) * weight
                    out[b, c, i, j] = total
    return out
