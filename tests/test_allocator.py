"""The CPU allocator setting (harness.models.allocator), in a fresh process each time."""

from __future__ import annotations

import platform
import subprocess
import sys


def run(code: str) -> str:
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return done.stdout.strip()


def test_glibc_takes_the_setting_and_loading_on_cpu_applies_it() -> None:
    expected = str(platform.libc_ver()[0] == "glibc")
    taken = run("from harness.models.allocator import keep_freed_memory as k; print(k())")
    assert taken == expected
    loaded = run(
        "import harness.models.loading as m, torch\n"
        "calls = []\n"
        "m.keep_freed_memory = lambda: calls.append(1)\n"
        "m.load(m.resolve('tiny-mamba2'), 'cpu', torch.float32, 'torch')\n"
        "print(len(calls))"
    )
    assert loaded == "1"
