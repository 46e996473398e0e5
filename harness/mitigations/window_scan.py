"""The scan of the `window` mitigation: each layer sees the state of the last r tokens only.

The paper's method 3 (sliding window by state difference). Per head, with
alpha_{i:t} = prod_{j=i+1..t} alpha_j and dtB_i = dt_i B_i,

    h_t     = sum_{i <= t}     alpha_{i:t} dtB_i x_i^T           (the plain state)
    h^(r)_t = sum_{t-r < i <= t} alpha_{i:t} dtB_i x_i^T = h_t - o_t,
    o_t     = sum_{i <= t-r}   alpha_{i:t} dtB_i x_i^T           (the part older than r tokens)

and y_t = C_t h^(r)_t. The old part obeys the same recurrence with the same decays, fed with
the inputs of r tokens earlier, scaled by the retention they have accumulated since:

    o_t = alpha_t o_{t-1} + alpha_{t-r:t} dtB_{t-r} x_{t-r}^T,
    alpha_{t-r:t} = exp(D_t),  D_t = sum_{t-r < j <= t} dt_j A_j   (a running sum, not a product).

So y^(r) = scan(x, dt, A, B, C) - scan(x', dt, A, B', C) with the family's own scan, whose
insertion dt_t B'_t x'_t^T must be the delayed one. With a decay per head (Mamba-2),
B'_t = B_{t-r} (shared by the heads of a group) and x'_t = x_{t-r} * dt_{t-r} / dt_t * exp(D_t);
with a decay per state entry (Mamba-1, RWKV-6) D_t is per (head, entry), so the retention goes
into B instead: B'_t = B_{t-r} * exp(D_t) per head and x'_t = x_{t-r} * dt_{t-r} / dt_t.
Positions before the first token contribute zero. The same holds for a scan that reads the
state before the current token (RWKV's): both scans do, and the difference is then the state
of the r tokens before t. This is exact at every token, whatever the
chunking, and costs two scans plus O(length) bookkeeping:

- D_t is carried as a float64 running sum, D_t = D_{t-1} + dt_t A_t - dt_{t-r} A_{t-r}, so its
  error does not grow with the absolute position (a difference of two long cumulative sums
  would lose float32 precision after a few thousand tokens);
- the carried `WindowState` holds both states (h and o), D and the inputs of the last r tokens
  (dt x, B, dt A), as the pieces they arrived in; a call touches only the pieces it reads.

Exact at any length. h^(r) = h - o loses float32 digits in proportion to ||h|| / ||h^(r)||;
carried over the whole history, that grows without bound on heads that barely forget (and any
rounding error once made stays in h forever). So nothing older than two blocks of
block = max(2r, RESTART) tokens is ever held. At each restart b (absolute positions that are
multiples of block):

    h <- h - o = h^(r)_b,   o <- 0,   and a fresh scan s of the new tokens starts from zero.

For t in (b, b + r], h - o is still exact (o removes the tokens of h^(r)_b as they leave). At
t = b + r every token of h^(r)_b has left the window, so that part of h and all of o are zero
in exact arithmetic and only their rounding is left: h <- s, o <- 0. From there o takes in the
tokens after b. So h and o never hold more than 2 blocks of inputs, and the error is bounded
by the window, not by the history; the fresh scan costs one more scan of r tokens per block.

While fewer than r tokens have been seen, o is zero and its scan is skipped: with r at least the
sequence length the output is the plain scan's, bit for bit. x' needs dt_t > 0, which softplus
gives unless it underflows to 0 (a token that then inserts nothing, and removes nothing).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import torch

from harness.models.recurrence import ScanInputs

# A log-decay below this counts as zero retention (exp(-60) ~ 1e-26, lost in float32 rounding;
# the subnormal numbers it would make slow CPU arithmetic down), as in the engine's scan.
NEGLIGIBLE = -60.0
# Fewest tokens between restarts (block = max(2r, RESTART)): few extra kernel calls per piece,
# while h - o cancels at most block / r of the window's magnitude.
RESTART = 256

# The engine's scan: inputs and the carried h (b, h, p, n) or None -> (y (b, l, h, p), h).
ScanFn = Callable[[ScanInputs, torch.Tensor | None], tuple[torch.Tensor, torch.Tensor]]


@dataclass(frozen=True)
class Piece:
    """Inputs of consecutive past tokens, kept until they leave the window."""

    start: int  # absolute position of the first token
    dtx: torch.Tensor  # (b, l, h, p) dt_i * x_i
    B: torch.Tensor  # (b, l, g, n)
    dtA: torch.Tensor  # (b, l, h) or (b, l, h, n) float64, dt_i * A_i = log alpha_i

    @property
    def end(self) -> int:
        return self.start + self.dtx.shape[1]

    def slice(self, first: int, last: int) -> Piece:
        """Positions first..last-1 (within this piece)."""
        a, b = first - self.start, last - self.start
        return Piece(first, self.dtx[:, a:b], self.B[:, a:b], self.dtA[:, a:b])


@dataclass(frozen=True)
class WindowState:
    """What the windowed scan carries for one layer between calls."""

    h: torch.Tensor | None = None  # (b, h, p, n) plain state h_t; None = zero
    old: torch.Tensor | None = None  # (b, h, p, n) o_t, the part older than r; None = zero
    log_decay: torch.Tensor | None = None  # (b, h) or (b, h, n) float64, D_t = log alpha_{t-r:t}
    fresh: torch.Tensor | None = None  # (b, h, p, n) scan of the tokens since the last restart
    pieces: tuple[Piece, ...] = field(default=())  # inputs of the tokens o has yet to take in

    @property
    def window(self) -> torch.Tensor | None:
        """h^(r)_t (b, h, p, n), the state of the last r tokens."""
        if self.h is None or self.old is None:
            return self.h
        return self.h - self.old

    def clone(self) -> WindowState:
        def copy(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t.clone()

        # pieces are never written to, so they can be shared
        return replace(
            self,
            h=copy(self.h),
            old=copy(self.old),
            log_decay=copy(self.log_decay),
            fresh=copy(self.fresh),
        )


class WindowScan:
    """A replacement Scan: the plain scan minus the scan of the inputs r tokens old."""

    def __init__(self, r: int, scan: ScanFn) -> None:
        self.r = r
        self.scan = scan
        self.block = max(2 * r, RESTART)

    def __call__(
        self, inputs: ScanInputs, state: WindowState | None
    ) -> tuple[torch.Tensor, WindowState]:
        """The piece in parts ending at the restart points b and b + r (see the module doc)."""
        state = state or WindowState()
        ys = []
        for part in _split(inputs, self.block, self.r):
            offset = part.start % self.block  # the part lies in (b + offset, ...]
            y, state = self._scan(part, state)
            if part.start >= self.block and offset < self.r:  # within (b, b + r]: track s
                state = replace(state, fresh=self.scan(part, state.fresh)[1])
            end = (part.start + part.x.shape[1]) % self.block
            if end == 0:  # at b: h <- h^(r), o <- 0, s starts from zero
                state = replace(state, h=state.window, old=None, fresh=None)
            elif end == self.r and part.start >= self.block:  # at b + r: drop what left
                state = replace(state, h=state.fresh, old=None, fresh=None)
            ys.append(y)
        return (ys[0] if len(ys) == 1 else torch.cat(ys, dim=1)), state

    def _scan(self, inputs: ScanInputs, state: WindowState) -> tuple[torch.Tensor, WindowState]:
        length = inputs.x.shape[1]
        y, h = self.scan(inputs, state.h)  # y (b, l, h, p)
        current = _piece(inputs)
        pieces = (*state.pieces, current)
        first = inputs.start - self.r  # position of the token each output must drop
        if first + length <= 0:  # nothing has left the window yet: o = 0
            log_decay = _add(state.log_decay, current.dtA.sum(1))
            return y, replace(state, h=h, log_decay=log_decay, pieces=pieces)
        delayed = _gather(pieces, first, length, current)
        # D_t for each t of this piece: D_{t-1} + dt_t A_t - dt_{t-r} A_{t-r}, float64,
        # (b, l, h) or (b, l, h, n)
        log_decay = torch.cumsum(current.dtA - delayed.dtA, dim=1)
        if state.log_decay is not None:
            log_decay = log_decay + state.log_decay[:, None]
        dt = inputs.dt.clamp_min(torch.finfo(inputs.dt.dtype).tiny)  # (b, l, h)
        retention = torch.exp(log_decay.masked_fill(log_decay < NEGLIGIBLE, -torch.inf))
        retention = retention.to(dt.dtype)
        if inputs.per_entry:  # exp(D_t) per (head, entry) into B', dt_{t-r} / dt_t into x'
            heads = inputs.x.shape[2]
            B_old = delayed.B.repeat_interleave(heads // delayed.B.shape[2], dim=2) * retention
            x_old = delayed.dtx / dt[..., None]  # (b, l, h, p)
        else:  # exp(D_t) / dt_t per head into x'
            B_old = delayed.B
            x_old = delayed.dtx * (retention / dt)[..., None]  # (b, l, h, p)
        y_old, old = self.scan(inputs.with_(x=x_old, B=B_old), state.old)
        kept = tuple(p for p in pieces if p.end > first + length)
        return y - y_old, replace(state, h=h, old=old, log_decay=log_decay[:, -1], pieces=kept)


def _piece(inputs: ScanInputs) -> Piece:
    dt = inputs.dt  # (b, l, h)
    return Piece(
        start=inputs.start,
        dtx=inputs.x * dt[..., None],  # (b, l, h, p)
        B=inputs.B.clone(),  # a view of the mixer's whole [x, B, C]: keep B only
        dtA=inputs.log_alpha().double(),  # (b, l, h) or (b, l, h, n)
    )


def _split(inputs: ScanInputs, block: int, r: int) -> list[ScanInputs]:
    """`inputs` cut at the absolute positions b and b + r, b the multiples of `block`."""
    start, length = inputs.start, inputs.x.shape[1]
    points = range(start - start % block, start + length, block)  # b <= the first position
    cuts = sorted(
        {0, length, *(c - start for b in points for c in (b, b + r) if 0 < c - start < length)}
    )
    if len(cuts) == 2:
        return [inputs]

    return [inputs.piece(lo, hi) for lo, hi in itertools.pairwise(cuts) if lo < hi]


def _gather(pieces: tuple[Piece, ...], first: int, length: int, like: Piece) -> Piece:
    """The inputs of positions first..first+length-1, zero before position 0."""
    last = first + length
    parts = []
    if first < 0:
        parts.append(_zeros(like, min(-first, length)))
    for piece in pieces:
        if piece.start >= last:
            break
        lo, hi = max(first, 0, piece.start), min(last, piece.end)
        if lo < hi:
            parts.append(piece.slice(lo, hi))
    return Piece(
        start=first,
        dtx=torch.cat([p.dtx for p in parts], dim=1),
        B=torch.cat([p.B for p in parts], dim=1),
        dtA=torch.cat([p.dtA for p in parts], dim=1),
    )


def _zeros(like: Piece, length: int) -> Piece:
    def zeros(t: torch.Tensor) -> torch.Tensor:
        return t.new_zeros((t.shape[0], length, *t.shape[2:]))

    return Piece(0, zeros(like.dtx), zeros(like.B), zeros(like.dtA))


def _add(total: torch.Tensor | None, value: torch.Tensor) -> torch.Tensor:
    return value if total is None else total + value
