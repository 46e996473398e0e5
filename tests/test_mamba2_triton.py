"""The Triton backend (mamba-ssm's kernels) against the torch scan, in Triton's CPU interpreter;
its splitting of long inputs at a safe number of tokens per call, with the torch scan standing in
for the kernel.

The interpreter test runs in a subprocess: mamba-ssm must never be importable in the process
that runs transformers' Mamba2 as the CPU oracle (transformers would switch to its kernels). The
subprocess uses $HARNESS_MAMBA_PYTHON (an environment with mamba-ssm and triton, e.g. built with
MAMBA_FORCE_BUILD=TRUE MAMBA_SKIP_CUDA_BUILD=TRUE) or this interpreter; without mamba-ssm the
test is skipped, saying why.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from harness.models.mamba2 import triton_scan
from harness.models.mamba2.ssd import ssd_scan

ROOT = Path(__file__).resolve().parents[1]
SKIP = "SKIP: "

SCRIPT = r"""
import contextlib, importlib.util, sys

missing = [m for m in ("mamba_ssm", "triton") if importlib.util.find_spec(m) is None]
if missing:
    print("SKIP: not importable in " + sys.executable + ": " + ", ".join(missing))
    sys.exit(0)

import torch
from triton.runtime.autotuner import Autotuner

# CPU-interpreter shims: mamba-ssm enters torch.cuda.device(x.device.index), None on CPU, and
# autotuning needs a GPU driver: take each kernel's first config.
torch.cuda.device = lambda index: contextlib.nullcontext()
prune = Autotuner.prune_configs
Autotuner.prune_configs = lambda self, kwargs: prune(self, kwargs)[:1]

import harness.models.mamba2.triton_scan as triton_scan
from harness.models.mamba2 import Mamba2, Mamba2Config
from harness.models.mamba2.ssd import ssd_scan

def check(name, got, want, tol=1e-4):
    err = float((got - want).abs().max() / want.abs().max().clamp_min(1.0))
    print(f"{name}: {err:.2e}")
    assert err < tol, name

torch.manual_seed(0)
b, l, h, p, g, n = 2, 40, 4, 8, 2, 16
x, B, C = torch.randn(b, l, h, p), torch.randn(b, l, g, n), torch.randn(b, l, g, n)
dt = torch.nn.functional.softplus(torch.randn(b, l, h))
A = -torch.rand(h) - 0.1
h0 = torch.randn(b, h, p, n)
for name, A_ in [("per-head A", A), ("per-token A", A * (1 + torch.rand(b, l, h)))]:
    triton_scan.MAX_TOKENS = 16 if A_.dim() == 3 else 1 << 15  # also: long inputs in pieces
    y, state = triton_scan.triton_scan(x, dt, A_, B, C, 16, h0)
    y_ref, state_ref = ssd_scan(x, dt, A_, B, C, 16, h0)
    check(name + " y", y, y_ref)
    check(name + " state", state, state_ref)

model = Mamba2(Mamba2Config(d_model=16, n_layer=1, vocab_size=40, d_state=16, headdim=8,
                            ngroups=2, chunk_size=16)).eval()
ids = torch.randint(0, 40, (1, 37))
with torch.no_grad():
    want, _ = model(ids, backend="torch")
    first, state = model(ids[:, :20], backend="triton")
    rest, _ = model(ids[:, 20:], state, backend="triton")
check("model logits", torch.cat([first, rest], dim=1), want)
print("OK")
"""


def test_triton_backend_matches_torch_scan() -> None:
    python = os.environ.get("HARNESS_MAMBA_PYTHON", sys.executable)
    env = os.environ | {"TRITON_INTERPRET": "1", "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [python, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=900
    )
    out = done.stdout.strip()
    if out.startswith(SKIP):
        pytest.skip(out.removeprefix(SKIP) + " (set HARNESS_MAMBA_PYTHON to a Python that has)")
    assert done.returncode == 0 and out.endswith("OK"), out + done.stderr[-3000:]


def test_calls_are_split_at_the_safe_cap_with_the_state_carried(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(triton_scan, "MAX_TOKENS", 32)
    seen: list[int] = []

    def kernel(
        *args: torch.Tensor, initial_states: torch.Tensor, return_final_states: bool
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """mamba_chunk_scan_combined's signature, on the torch scan."""
        x, dt, A, B, C, chunk_size = args
        assert return_final_states and A.dim() == 1
        seen.append(x.shape[1])
        return ssd_scan(x, dt, A, B, C, int(chunk_size), initial_states)

    g = torch.Generator().manual_seed(0)
    b, l, h, p, groups, n = 2, 100, 4, 3, 2, 5
    x, dt = torch.randn(b, l, h, p, generator=g), torch.rand(b, l, h, generator=g)
    B, C = torch.randn(b, l, groups, n, generator=g), torch.randn(b, l, groups, n, generator=g)
    A, h0 = -torch.rand(h, generator=g), torch.randn(b, h, p, n, generator=g)
    y, state = triton_scan.split_calls(kernel, x, dt, A, B, C, 8, h0)
    y_ref, state_ref = ssd_scan(x, dt, A, B, C, 8, h0)
    assert seen == [32, 32, 32, 4]
    assert (y - y_ref).abs().max() < 1e-5 and (state - state_ref).abs().max() < 1e-5


@pytest.mark.parametrize(
    ("b", "h", "p", "g", "n", "chunk"),
    [
        (1, 24, 64, 1, 128, 256),  # mamba2-130m
        (1, 128, 64, 8, 128, 256),  # mamba2-2.7b
        (64, 24, 64, 1, 128, 256),  # a batch of 64
        (1, 1024, 128, 8, 256, 128),  # wider than any released Mamba-2
    ],
)
def test_safe_tokens_keeps_every_tensor_of_a_call_under_int32(
    b: int, h: int, p: int, g: int, n: int, chunk: int
) -> None:
    cap = triton_scan.safe_tokens(b, h, p, g, n, chunk)
    assert cap % chunk == 0 and chunk <= cap <= triton_scan.MAX_TOKENS < 61_000
    for per_token in (h * p, g * n, h * p * n / chunk, g * chunk):
        assert b * cap * per_token < 2**31
