"""The scan on mamba-ssm's Triton kernels (`mamba_chunk_scan_combined`), when installed.

The kernels take one A per head; a per-token A_t (b, l, h), as mitigations produce, is folded
into dt and x against a fixed A0 = -1 per head so that decay and insertion are unchanged:

    dt'_t = dt_t A_t / A0 = -dt_t A_t      ->  exp(dt'_t A0) = exp(dt_t A_t)
    x'_t  = x_t dt_t / dt'_t = -x_t / A_t  ->  dt'_t B_t x'_t^T = dt_t B_t x_t^T

(A_t is clamped below -1e-30 so that x' stays finite.)

The kernels compute some pointer offsets in int32: past 2^31 elements of one tensor they read
and write the wrong place, silently or with an illegal memory access (mamba-ssm issues #1015,
~61K tokens on a wide model, and #686, 512K tokens on a 1.3b). No call gets more than
safe_tokens(...) tokens, bounded so that every tensor a call touches stays under 2^30 elements
(half the limit, as margin); longer inputs go through in pieces with the state carried.
"""

from __future__ import annotations

import importlib.util
import sys
import types
from functools import cache
from typing import Any

import torch

MAX_TOKENS = 1 << 15  # tokens per kernel call, at most
SAFE_ELEMENTS = 1 << 30  # elements of one tensor of a call, at most (int32 offsets: 2^31)
MIN_DECAY_RATE = 1e-30  # smallest -A_t folded into dt and x


@cache
def triton_available() -> bool:
    """Whether mamba-ssm and triton are installed (without importing them)."""
    return all(importlib.util.find_spec(name) is not None for name in ("mamba_ssm", "triton"))


@cache
def _kernel() -> Any:
    """mamba_chunk_scan_combined; mamba-ssm imports its CUDA extension first, which a build
    without CUDA lacks and the Triton SSD kernels do not need: an empty stand-in is given."""
    sys.modules.setdefault("selective_scan_cuda", types.ModuleType("selective_scan_cuda"))
    from mamba_ssm.ops.triton.ssd_combined import mamba_chunk_scan_combined

    return mamba_chunk_scan_combined


def triton_scan(
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    chunk_size: int,
    initial_state: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Same contract as ssd.ssd_scan: -> y (b, l, h, p) without D x, final state (b, h, p, n)."""
    if A.dim() == 3:  # per token (b, l, h): fold into dt and x against A0 = -1
        rate = (-A).clamp_min(MIN_DECAY_RATE)  # -A_t > 0
        x, dt, A = x / rate[..., None], dt * rate, -torch.ones_like(A[0, 0])
    return split_calls(_kernel(), x, dt, A, B, C, chunk_size, initial_state)


def split_calls(
    kernel: Any,
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    chunk_size: int,
    initial_state: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """kernel (mamba_chunk_scan_combined's signature, A (h,)) over pieces of at most
    safe_tokens(...) tokens, the state carried from one to the next."""
    b, l, h, p = x.shape
    g, n = B.shape[-2:]
    cap = safe_tokens(b, h, p, g, n, chunk_size)
    state = initial_state
    ys = []
    for start in range(0, l, cap):
        piece = slice(start, start + cap)
        y, state = kernel(
            x[:, piece].contiguous(),
            dt[:, piece].contiguous(),
            A.contiguous(),
            B[:, piece].contiguous(),
            C[:, piece].contiguous(),
            chunk_size,
            initial_states=state,
            return_final_states=True,
        )
        ys.append(y)
    return torch.cat(ys, dim=1), state


def safe_tokens(b: int, h: int, p: int, g: int, n: int, chunk_size: int) -> int:
    """Tokens per kernel call: at most MAX_TOKENS, a multiple of chunk_size, and few enough
    that each tensor of the call, per token (x and y: h p; B and C: g n; the chunks' states:
    h p n / chunk_size; C B^T blocks: g chunk_size), has under SAFE_ELEMENTS elements."""
    per_token = max(h * p, g * n, -(-h * p * n // chunk_size), g * chunk_size)
    cap = min(MAX_TOKENS, SAFE_ELEMENTS // (b * per_token))
    return max(chunk_size, cap - cap % chunk_size)
