"""What the na2d op tests share: tolerances and the pixel-loop oracle of ``specs/ops.md``
section 1 (``test_na2d.py``, ``test_na2d_split_rpe.py``)."""
import math

import torch

# Tolerances, per dtype.
# float64: the op and the oracle/reference sum the same few terms in other orders; the error is
# a few ulps of O(1) values.
FP64_TOL = dict(rtol=1e-10, atol=1e-12)
# float32 against a float64 reference: the spec's 1e-5 relative agreement; atol covers outputs
# that cancel to ~0.
FP32_TOL = dict(rtol=1e-5, atol=1e-5)
# float32 gradients that are reductions over every pixel of the batch (d_rpb, d_rpe): a sum of
# B*H*W*k*k fp32 terms of size O(1) carries an absolute error of ~sqrt(n) * 6e-8 * |term|,
# ~1e-5 for the shapes used here, so their atol is scaled with the largest entry.
FP32_REDUCTION_RTOL = 1e-5
FP32_REDUCTION_ATOL_PER_MAX = 1e-5
# bfloat16 inputs, computed in fp32 and rounded to bf16 (8 significant bits, relative rounding
# 2**-8 = 3.9e-3): compared with the fp32 result on the same (upcast) inputs. The training path
# also rounds the softmax to bf16 before the value aggregation, so the gradients get twice that.
BF16_TOL = dict(rtol=2e-2, atol=2e-2)
BF16_GRAD_TOL = dict(rtol=4e-2, atol=4e-2)
# float64 gradcheck: torch's defaults (finite differences with eps 1e-6).
GRADCHECK = dict(eps=1e-6, atol=1e-5, rtol=1e-3)


# --------------------------------------------------------------------------------------------
# An oracle written from the spec, one pixel at a time
# --------------------------------------------------------------------------------------------
def oracle_axis(i, length, ks, dilation, border):
    """Key coordinate of every tap of query ``i`` along one axis; ``None`` for excluded taps.

    'mask': the window is centred on the query, taps outside the image are excluded.
    'clamp' (NATTEN): the ``dilation`` groups ``p % dilation`` are sub-grids; in group
    coordinates the window starts at ``clamp(i_g - k // 2, 0, L_g - k)``.
    """
    r = ks // 2
    if border == 'mask':
        keys = [i + (a - r) * dilation for a in range(ks)]
        return [p if 0 <= p < length else None for p in keys]
    group, ig = i % dilation, i // dilation
    lg = len(range(group, length, dilation))
    start = min(max(ig - r, 0), lg - ks)
    return [(start + a) * dilation + group for a in range(ks)]


def na2d_oracle(q, k, v, ks, dilation=1, border='mask', rpb=None, rpe=None, bias=None,
                scale=None):
    """``specs/ops.md`` section 1, literally: a loop over batch, heads and pixels (float64)."""
    q, k, v = q.double(), k.double(), v.double()
    B, heads, H, W, D = q.shape
    scale = D**-0.5 if scale is None else scale
    out = torch.zeros_like(q)
    for b in range(B):
        for h in range(heads):
            for i in range(H):
                rows = oracle_axis(i, H, ks, dilation, border)
                for j in range(W):
                    cols = oracle_axis(j, W, ks, dilation, border)
                    logits, values = [], []
                    for a, pi in enumerate(rows):
                        for c, pj in enumerate(cols):
                            if pi is None or pj is None:
                                continue  # excluded from the softmax
                            key = k[b, h, pi, pj]
                            if rpe is not None:
                                key = key + rpe[h, a, c].double()
                            logit = scale * float(q[b, h, i, j] @ key)
                            if rpb is not None:
                                assert (pi - i) % dilation == 0 and (pj - j) % dilation == 0
                                oi = (pi - i) // dilation + ks - 1
                                oj = (pj - j) // dilation + ks - 1
                                logit += float(rpb[h, oi, oj])
                            if bias is not None:
                                logit += float(bias[b, h, i, j, a * ks + c])
                            logits.append(logit)
                            values.append(v[b, h, pi, pj])
                    m = max(logits)
                    weights = [math.exp(x - m) for x in logits]
                    total = sum(weights)
                    out[b, h, i, j] = sum(w / total * x for w, x in zip(weights, values))
    return out
