import subprocess
import sys
import textwrap

import pytest
from click.testing import CliRunner

from comfyui_cyclevos import cli
from comfyui_cyclevos.runtime import allocator

# Five-object gradient corrections at 240x432 (random weights), the engine's heaviest churn of
# multi-MB tensors; prints whether the thresholds were set and the fewest minor page faults of one
# correction after two.
CORRECTIONS = textwrap.dedent("""
    import resource, sys, torch
    from comfyui_cyclevos.runtime.allocator import keep_freed_memory
    from comfyui_cyclevos.cycle.correction import gradient_correct
    from comfyui_cyclevos.model.network import CycleVOSNet
    applied = keep_freed_memory() if sys.argv[1] == "keep" else None
    torch.manual_seed(0)
    net = CycleVOSNet().for_inference().to(memory_format=torch.channels_last)
    x, xr = (torch.rand(1, 3, 240, 432).contiguous(memory_format=torch.channels_last) for _ in range(2))
    m, rm = torch.rand(1, 5, 240, 432), (torch.rand(1, 5, 240, 432) > 0.5).float()
    with torch.no_grad():
        f, fr = net.encode_frame(x), net.encode_frame(xr)
    correct = lambda: gradient_correct(net, m, x, f, ref_frame=xr, ref_features=fr, ref_masks=rm, steps=2)
    faults = []
    for _ in range(6):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        correct()
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    print(applied, min(faults[2:]))  # the first ones also fault in the heap's first growth
""")


def corrections_faults(mode: str) -> tuple[str, float]:
    out = subprocess.run([sys.executable, "-c", CORRECTIONS, mode], check=True, capture_output=True, text=True).stdout
    applied, faults = out.split()
    return applied, float(faults)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc only")
def test_kept_freed_memory_stops_the_page_faults_of_gradient_correction():
    """glibc's defaults hand the correction's big freed tensors back to the kernel, so they fault in again
    on every step; with the thresholds set they stay in the process."""
    applied, kept = corrections_faults("keep")
    if applied == "False":
        pytest.skip("not glibc")
    assert applied == "True"
    _, default = corrections_faults("default")
    if default < 1000:
        pytest.skip(f"this glibc keeps the blocks by itself ({default:.0f} faults per correction)")
    assert kept < default / 10, (kept, default)


def test_keep_freed_memory_changes_nothing_off_linux(monkeypatch):
    monkeypatch.setattr(allocator.sys, "platform", "darwin")
    monkeypatch.setattr(allocator.ctypes, "CDLL", lambda *a: pytest.fail("mallopt looked up off Linux"))
    assert allocator.keep_freed_memory() is False


def test_the_cli_keeps_freed_memory_for_its_own_process(monkeypatch, tmp_path):
    calls = []
    monkeypatch.setattr(cli.app, "keep_freed_memory", lambda: calls.append(1) or True)
    r = CliRunner().invoke(
        cli.main,
        ["segment", str(tmp_path / "missing"), "--mask", str(tmp_path / "m.png"), "--out", str(tmp_path / "o")],
    )
    assert r.exit_code == 2 and calls == [1], r.output
