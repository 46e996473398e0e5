"""The gated linear recurrence every recurrent family here is, its hook points, and a plain
torch scan for any diagonal decay.

One layer keeps, per head, a state h (p x n) and reads it out with C (the paper's notation):

    h_t = alpha_t ⊙ h_{t-1} + dt_t x_t B_t^T        alpha_t = exp(dt_t A_t)
    y_t = C_t h_t    (or C_t h_{t-1}: `current=False`, RWKV's form)

with a decay per head (Mamba-2: A (h,)), or per head and state entry n, the key channel
(Mamba-1: A (h, n) with one head per channel and p = 1; RWKV-6: dt = 1, A = log w per token,
x = v, B = k, C = r). A family's own terms (Mamba's D x skip, RWKV's bonus u) stay outside.

Per layer and per piece of the sequence, a family's mixer computes these `ScanInputs`, then
`run_scan` applies the hooks:

  1. `transform_inputs(layer, inputs)` may edit dt, A and B (forget more / remember less,
     dt and A scaling, token filtering). A may come back per token, (b, l, h) or (b, l, h, n).
  2. the scan runs: `scans[layer]` when a replacement is set for that layer (the sliding
     window), the family's own scan otherwise. A scan returns y = C h, a new tensor the
     family may write in place, and the state to carry.
  3. every `interval` tokens (at absolute positions that are multiples of it), the scan stops,
     `transform_state(layer, h, position)` is called (state normalization) and a
     `StateSnapshot` goes to `observer` (state statistics), then it goes on.

With no hook set none of these branches is taken: the plain path is not slowed. Mamba-2 keeps
its own scan (harness/models/mamba2/ssd.py): with one decay per head a chunk's decays form an
L x L matrix per head and the chunk is a few matrix products over 64-256 tokens, where a decay
per state entry needs an L x L x n block: `diagonal_scan` steps token by token on CPU and
computes such blocks 16 tokens at a time elsewhere.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

import torch

CHUNK = 16  # tokens per chunk of chunked_scan: its (b, T, T, h, n) decay block stays small


@dataclass(frozen=True)
class ScanInputs:
    """One layer's scan inputs for one piece of the sequence (float32)."""

    x: torch.Tensor  # (b, l, h, p)
    dt: torch.Tensor  # (b, l, h), >= 0
    A: torch.Tensor  # (h,), (b, l, h), (h, n) or (b, l, h, n); <= 0
    B: torch.Tensor  # (b, l, g, n), g dividing h: h / g heads share a group's B and C
    C: torch.Tensor  # (b, l, g, n)
    start: int  # absolute position of the first token of this piece

    def with_(self, **changes: torch.Tensor) -> ScanInputs:
        return replace(self, **changes)

    @property
    def per_entry(self) -> bool:
        """Whether the decay differs per state entry n (A has an n axis)."""
        return self.A.dim() in (2, 4)

    def log_alpha(self) -> torch.Tensor:
        """dt_t A_t: (b, l, h), or (b, l, h, n) with a decay per state entry."""
        return (self.dt[..., None] if self.per_entry else self.dt) * self.A

    def plus_log_decay(self, extra: torch.Tensor) -> ScanInputs:
        """Inputs whose log-decay dt A is larger by `extra` (b, l, h): A + extra / dt, per token
        (dt must be > 0 where extra is not 0)."""
        per_head = extra / self.dt
        return self.with_(A=self.A + (per_head[..., None] if self.per_entry else per_head))

    def piece(self, lo: int, hi: int) -> ScanInputs:
        """Tokens lo..hi-1 of this piece."""
        A = self.A if self.A.dim() <= 2 else self.A[:, lo:hi]
        return ScanInputs(
            x=self.x[:, lo:hi],
            dt=self.dt[:, lo:hi],
            A=A,
            B=self.B[:, lo:hi],
            C=self.C[:, lo:hi],
            start=self.start + lo,
        )


@dataclass(frozen=True)
class StateSnapshot:
    """A layer's state at an absolute position, with the decays of the last interval."""

    layer: int
    position: int  # tokens consumed so far
    h: torch.Tensor  # (b, h, p, n) float32
    dt: torch.Tensor  # (b, l, h) of the interval that ended here
    A: torch.Tensor  # as scanned: (h,), (b, l, h), (h, n) or (b, l, h, n)

    def log_alpha(self) -> torch.Tensor:
        """dt_t A_t of the interval: (b, l, h), or (b, l, h, n) with a decay per state entry."""
        return (self.dt[..., None] if self.A.dim() in (2, 4) else self.dt) * self.A

    def stats(self) -> dict[str, torch.Tensor]:
        """Per (batch, head) statistics of the state, each (b, h)."""
        flat = self.h.flatten(2)
        return {
            "norm": torch.linalg.vector_norm(flat, dim=-1),
            "mean": flat.mean(-1),
            "var": flat.var(-1, unbiased=False),
            "max_abs": flat.abs().amax(-1),
        }


class Scan(Protocol):
    """A scan: inputs and the carried layer state -> (y (b, l, h, p), new layer state).

    The families' own scans carry h (b, h, p, n) float32; a replacement may carry any object
    (it gets back what it returned). `None` means the zero state.
    """

    def __call__(self, inputs: ScanInputs, state: Any) -> tuple[torch.Tensor, Any]: ...


@dataclass
class Hooks:
    transform_inputs: Callable[[int, ScanInputs], ScanInputs] | None = None
    transform_state: Callable[[int, torch.Tensor, int], torch.Tensor] | None = None
    observer: Callable[[StateSnapshot], None] | None = None
    interval: int = 128  # tokens between transform_state / observer calls
    scans: dict[int, Scan] = field(default_factory=dict)  # layer -> replacement scan

    @property
    def segmented(self) -> bool:
        """Whether the scan must stop every `interval` tokens."""
        return self.transform_state is not None or self.observer is not None


def piece_tokens(device: torch.device) -> int:
    """Tokens per pass through a model's layers: 2048 on CPU (1.2x faster at 16K than one pass,
    from fewer page faults), 65536 elsewhere (each pass launches its own kernels)."""
    return 2048 if device.type == "cpu" else 65536


def in_pieces(
    layers: Callable[[torch.Tensor, Any], tuple[torch.Tensor, Any]],
    head: Callable[[torch.Tensor], torch.Tensor],
    ids: torch.Tensor,
    state: Any,
    last_only: bool,
) -> tuple[torch.Tensor, Any]:
    """A family's `layers(ids, state) -> (residual stream u, state)` over ids (b, l) in pieces
    of at most piece_tokens(device) tokens with the state carried (exact, as for any split),
    and its `head(u) -> logits`: the layers' working memory stays bounded, and on CPU small
    tensors are reused by the allocator instead of being mapped fresh, page by page. -> logits
    (b, l, vocab), or the last token's (b, 1, vocab) with last_only (the head reads that token
    alone: at 130m, a 50K-vocab head over one token costs 12 ms, over every piece's last 0.3%
    of a long prefill), and the state."""
    b, length = ids.shape
    piece = piece_tokens(ids.device)
    if length <= piece:
        u, state = layers(ids, state)
        return head(u[:, -1:] if last_only else u), state
    logits = None
    for start in range(0, length, piece):
        u, state = layers(ids[:, start : start + piece], state)
        if not last_only:
            out = head(u)
            if logits is None:  # (b, l, vocab): filled piece by piece, never concatenated
                logits = out.new_empty(b, length, out.shape[-1])
            logits[:, start : start + piece] = out
    return (head(u[:, -1:]) if last_only else logits), state


# dt (b, k, h) and A of the k tokens since the last multiple of the hooks' interval: what a
# StateSnapshot reports when the interval spans several calls.
Partial = tuple[torch.Tensor, torch.Tensor]


@dataclass(frozen=True)
class Carried:
    """What one layer's scan carries between calls."""

    ssm: Any = None  # h (b, h, p, n) float32, a replacement scan's state, or None (zero)
    partial: Partial | None = None  # the unfinished interval's dt and A, for observers


def run_scan(
    layer: int, inputs: ScanInputs, carried: Carried, hooks: Hooks | None, scan: Scan
) -> tuple[torch.Tensor, Carried]:
    """One layer's scan with the hooks: -> y (b, l, h, p), what to carry."""
    if hooks is None:
        y, h = scan(inputs, carried.ssm)
        return y, replace(carried, ssm=h)
    if hooks.transform_inputs is not None:
        inputs = hooks.transform_inputs(layer, inputs)
    if layer in hooks.scans:
        y, state = hooks.scans[layer](inputs, carried.ssm)
        return y, replace(carried, ssm=state)
    if not hooks.segmented:
        y, h = scan(inputs, carried.ssm)
        return y, replace(carried, ssm=h)
    ys, h, partial = [], carried.ssm, carried.partial
    for lo, hi in _segments(inputs.start, inputs.x.shape[1], hooks.interval):
        piece = inputs.piece(lo, hi)
        y, h = scan(piece, h)
        ys.append(y)
        if hooks.observer is not None:
            partial = _extend(partial, piece.dt, piece.A)
        position = inputs.start + hi
        if position % hooks.interval:
            continue
        if hooks.transform_state is not None:
            h = hooks.transform_state(layer, h, position)
        if hooks.observer is not None and partial is not None:
            hooks.observer(StateSnapshot(layer, position, h, *partial))
            partial = None
    return torch.cat(ys, dim=1), Carried(h, partial)


def _segments(start: int, length: int, interval: int) -> list[tuple[int, int]]:
    """Offsets [lo, hi) cutting start..start+length at absolute multiples of interval."""
    first = (start // interval + 1) * interval - start  # offset of the first boundary
    cuts = [0, *range(first, length, interval), length]
    return list(itertools.pairwise(cuts))


def _extend(partial: Partial | None, dt: torch.Tensor, A: torch.Tensor) -> Partial:
    """The unfinished interval's (dt, A) with a piece's appended; A stays per head (h,) or
    (h, n) while it can, else per token (b, k, h[, n])."""
    if partial is None:
        return dt, A
    dt0, A0 = partial
    if A0.dim() == A.dim() <= 2 and torch.equal(A0, A):
        return torch.cat([dt0, dt], dim=1), A
    return torch.cat([dt0, dt], dim=1), torch.cat([_per_token(A0, dt0), _per_token(A, dt)], 1)


def _per_token(A: torch.Tensor, dt: torch.Tensor) -> torch.Tensor:
    """A as (b, k, h) or (b, k, h, n), for dt (b, k, h)."""
    if A.dim() in (3, 4):
        return A
    return A.expand(*dt.shape, *A.shape[1:])


def diagonal_scan(
    inputs: ScanInputs, h0: torch.Tensor | None, current: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """The recurrence for any decay shape, with h carried exactly: -> y (b, l, h, p), h_l
    (b, h, p, n). On CPU token by token (`stepwise_scan`), elsewhere chunk by chunk
    (`chunked_scan`: a few large kernels per 16 tokens instead of one per token)."""
    if inputs.x.device.type == "cpu":
        return stepwise_scan(inputs, h0, current)
    return chunked_scan(inputs, h0, current)


def stepwise_scan(
    inputs: ScanInputs, h0: torch.Tensor | None, current: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """The recurrence one token at a time, over all heads and state entries at once.

    A decay per state entry makes the chunked form's block L x L x n elementwise work (L times
    the recurrence's own), where the steps h_t = alpha_t h_{t-1} + (dt_t x_t) B_t^T cost n p
    multiply-adds per head and token. A few tokens at a time (`_steps`), alpha and the
    insertions are computed in bulk, each state is written over its token's insertion by one
    fused multiply-add (in place; out of place where autograd records, the same arithmetic),
    and y is read out in bulk. The working layout is (b, t, n, h, p), so that the long axis
    (h p) is the contiguous one in every broadcast.
    """
    x, B, C = inputs.x, inputs.B, inputs.C
    b, length, heads, p = x.shape
    n, groups = B.shape[-1], B.shape[2]
    dtx = (x * inputs.dt[..., None])[:, :, None]  # (b, l, 1, h, p)
    # (b, l, n, g, 1), contiguous: so are the products with them, whether autograd records or not
    B, C = B.transpose(2, 3).contiguous()[..., None], C.transpose(2, 3).contiguous()[..., None]
    if groups not in (1, heads):
        B, C = B.repeat_interleave(heads // groups, 3), C.repeat_interleave(heads // groups, 3)
    y = x.new_empty(b, length, heads, p)
    h = None if h0 is None else h0.permute(0, 3, 1, 2)  # (b, n, h, p)
    tracked = recorded(inputs, h0)
    fma = torch.Tensor.addcmul if tracked else torch.Tensor.addcmul_  # a + b * c
    step = _steps(n * heads * p)
    for lo in range(0, length, step):
        hi = min(lo + step, length)
        alpha = _log_alpha_nh(inputs, lo, hi).exp_()[..., None]  # (b, t, n or 1, h, 1)
        states = B[:, lo:hi] * dtx[:, lo:hi]  # (b, t, n, h, p): the insertions, then h_t
        rows, decays = list(states.unbind(1)), alpha.unbind(1)
        if h is not None:
            rows[0] = fma(rows[0], decays[0], h)
        for t in range(1, hi - lo):
            rows[t] = fma(rows[t], decays[t], rows[t - 1])
        if tracked:
            states = torch.stack(rows, 1)
        if current:
            y[:, lo:hi] = _read(states, C[:, lo:hi])
        else:  # y_t = C_t h_{t-1}
            y[:, lo + 1 : hi] = _read(states[:, :-1], C[:, lo + 1 : hi])
            y[:, lo] = 0 if h is None else _read(h[:, None], C[:, lo : lo + 1])[:, 0]
        h = rows[-1]
    if h is None:
        return y, x.new_zeros(b, heads, p, n)
    return y, h.permute(0, 2, 3, 1).contiguous()


def recorded(inputs: ScanInputs, h0: torch.Tensor | None) -> bool:
    """Whether autograd records operations on these inputs (training)."""
    tensors = (inputs.x, inputs.dt, inputs.A, inputs.B, inputs.C, h0)
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def _log_alpha_nh(inputs: ScanInputs, lo: int, hi: int) -> torch.Tensor:
    """dt_t A_t of tokens lo..hi-1 as a new (b, t, n, h), or (b, t, 1, h) where the decay is
    per head."""
    dt, A = inputs.dt[:, lo:hi], inputs.A
    if A.dim() == 1:  # (h,)
        return (dt * A)[:, :, None]
    if A.dim() == 2:  # (h, n)
        return dt[:, :, None] * A.T
    if A.dim() == 3:  # (b, l, h)
        return (dt * A[:, lo:hi])[:, :, None]
    return dt[:, :, None] * A[:, lo:hi].transpose(2, 3)


def _steps(state: int) -> int:
    """Tokens computed in bulk per round of stepwise_scan: their states (state floats per
    token) within about 1 MiB, so that they stay in cache between the bulk work and the steps."""
    return max(2, min(32, 2**18 // state))


def _read(states: torch.Tensor, C: torch.Tensor) -> torch.Tensor:
    """y = C h for states (b, t, n, h, p) and C (b, t, n, g, 1), g 1 or h: -> (b, t, h, p)."""
    if C.shape[3] == 1:  # one C for all heads: a product over n per token
        y = torch.einsum("btn,btnk->btk", C[..., 0, 0], states.flatten(3))
        return y.unflatten(2, states.shape[3:])
    return (states * C).sum(2)


def chunked_scan(
    inputs: ScanInputs, h0: torch.Tensor | None, current: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """The recurrence chunk by chunk (16 tokens), with h carried exactly.

    -> y (b, l, h, p), h_l (b, h, p, n). Within a chunk of T tokens, with cum_t the sum of
    log alpha_j over j <= t (from the chunk's start) per (head, entry), and e_t = cum_t
    (current) or cum_{t-1} (not current, with e_0 = 0 and s < t):

        y_t = sum_{s <= t} sum_n C_t[n] exp(e_t - cum_s)[n] B_s[n] dt_s x_s  +  C_t exp(e_t) h_0
        h_T = exp(cum_T) h_0  +  sum_s exp(cum_T - cum_s) (dt_s x_s) B_s^T

    Every exponent is <= 0 where it is used (no overflow); memory holds one (b, T, T, h, n)
    block and the output.
    """
    x, B, C = inputs.x, inputs.B, inputs.C
    b, length, heads, p = x.shape
    n = B.shape[-1]
    log_alpha = inputs.log_alpha()  # (b, l, h) or (b, l, h, n)
    if log_alpha.dim() == 3:
        log_alpha = log_alpha[..., None]
    log_alpha = log_alpha.expand(b, length, heads, n)
    B, C = _per_head(B, heads), _per_head(C, heads)  # (b, l, h, n)
    dtx = x * inputs.dt[..., None]  # (b, l, h, p): the insertion is (dt x) B^T
    h = x.new_zeros(b, heads, p, n) if h0 is None else h0
    y = torch.empty_like(x)
    mask = torch.ones(CHUNK, CHUNK, dtype=torch.bool, device=x.device).tril(0 if current else -1)
    for lo in range(0, length, CHUNK):
        hi = min(lo + CHUNK, length)
        T = hi - lo
        cum = log_alpha[:, lo:hi].cumsum(1)  # (b, T, h, n)
        e = cum if current else cum - log_alpha[:, lo:hi]
        gap = (e[:, :, None] - cum[:, None]).masked_fill(~mask[:T, :T, None, None], -math.inf)
        Bc, Cc, u = B[:, lo:hi], C[:, lo:hi], dtx[:, lo:hi]
        scores = torch.einsum("bthn,btshn,bshn->bhts", Cc, gap.exp(), Bc)  # (b, h, T, T)
        y[:, lo:hi] = torch.einsum("bhts,bshp->bthp", scores, u)
        y[:, lo:hi] += torch.einsum("bthn,bhpn->bthp", Cc * e.exp(), h)
        last = cum[:, -1]  # (b, h, n)
        inserted = torch.einsum("bshp,bshn->bhpn", u, (last[:, None] - cum).exp() * Bc)
        h = last.exp()[:, :, None] * h + inserted
    return y, h


def _per_head(t: torch.Tensor, heads: int) -> torch.Tensor:
    """(b, l, g, n) -> (b, l, h, n): each group's row for its h / g heads (a view if g = 1)."""
    g = t.shape[2]
    if g == heads:
        return t
    if g == 1:
        return t.expand(-1, -1, heads, -1)
    return t.repeat_interleave(heads // g, dim=2)
