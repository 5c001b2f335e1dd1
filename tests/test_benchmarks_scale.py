"""The GPU benchmark script runs on a machine that has torch and diffusers but none of the
store's dependencies (pydicom, fsspec, dask, s3fs, zarr, webdataset, google-crc32c), and the
scale simulator writes a real, committed cache. Both are checked end to end on tiny sizes."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BLOCKED = ("pydicom", "google_crc32c", "webdataset", "zarr", "dask", "distributed", "s3fs", "fsspec")

# Runs a script with the modules the GPU machine lacks made unimportable, and (optionally) with
# ``import latentds`` itself failing, so the script's fallback (codecs without the package
# __init__) is exercised too. Prints the blocked modules that still got imported (must be none).
RUNNER = textwrap.dedent("""
    import runpy, sys
    from importlib.abc import MetaPathFinder
    BLOCKED = set(sys.argv[1].split(","))
    class Blocker(MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ModuleNotFoundError(f"No module named {name!r} (blocked for this test)", name=name)
            return None
    sys.meta_path.insert(0, Blocker())
    if sys.argv[2] == "break-package":
        sys.modules["latentds"] = None  # `import latentds` raises ImportError
    sys.argv = sys.argv[3:]
    try:
        runpy.run_path(sys.argv[0], run_name="__main__")
    except SystemExit as exc:
        code = exc.code
    else:
        code = 0
    print("LEAKED:", sorted({m.split(".")[0] for m in sys.modules} & BLOCKED))
    sys.exit(code)
""")


def _run_blocked(tmp_path: Path, mode: str, *args: str, timeout: int = 240) -> subprocess.CompletedProcess[str]:
    runner = tmp_path / "runner.py"
    runner.write_text(RUNNER)
    return subprocess.run([sys.executable, str(runner), ",".join(BLOCKED), mode, *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)


# The run with the package importable (and the probe part) is slow on a loaded 2-core machine;
# the default run keeps the case that matters on the GPU machine: store modules blocked and the
# package __init__ failing.
@pytest.mark.parametrize("mode", [pytest.param("package", marks=pytest.mark.slow), "break-package"])
def test_gpu_encode_smoke_without_store_dependencies(tmp_path: Path, mode: str) -> None:
    out = tmp_path / "gpu.json"
    skip = ["--skip", "probe"] if mode == "break-package" else []  # the probe part is the same in both
    p = _run_blocked(tmp_path, mode, "benchmarks/gpu_encode.py", "--smoke", "--out", str(out), *skip)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    assert "LEAKED: []" in p.stdout
    r = json.loads(out.read_text())
    assert r["errors"] == []
    if mode == "break-package":
        assert r["codecs_import"].startswith("package __init__ skipped")
    (row,) = r["encode"]
    # latentds' encode and the bare diffusers forward compute the same latent (fp32, CPU)
    assert row["max_rel_diff_latentds_vs_bare_fp32"] < 1e-4
    assert all(v["img_per_s"] and v["img_per_s"] > 0 for v in row["variants"].values())
    assert set(row["ratios"]) >= {"fp32: latentds / bare NCHW", "bf16: latentds / bare NCHW"}
    if mode == "package":
        assert all(v and v > 0 for v in r["probe"]["rates"].values())


@pytest.mark.slow
def test_gpu_encode_refuses_without_cuda_unless_smoke(tmp_path: Path) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    p = subprocess.run([sys.executable, "benchmarks/gpu_encode.py", "--out", str(tmp_path / "x.json")], cwd=ROOT,
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 2 and "no CUDA device" in p.stderr
    assert not (tmp_path / "x.json").exists()


@pytest.mark.slow  # ~1 min on a loaded 2-core machine (staging writes, four fresh interpreters)
def test_scale_sim_tiny(tmp_path: Path) -> None:
    """The simulator end to end on a tiny cache: the simulated generation is one the project's
    reader opens (rows, CRC-checked warm reads of the real rows), verify reads the real shards
    and names every simulated one as missing, gc lists them, an incremental compact merges."""
    out = tmp_path / "scale.json"
    p = subprocess.run([sys.executable, "benchmarks/scale_sim.py", "--rows", "20000", "--real-samples", "512",
                        "--open-runs", "1", "--compact-new", "256", "--dir", str(tmp_path / "cache"), "--json", str(out)],
                       cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    r = json.loads(out.read_text())
    real, sim = r["real"], r["sim"]
    assert real["packed"] == 512 and real["compact_vs_copy"] > 0 and real["verify_samples_per_s"] > 0
    assert sim["rows"] == 20000 and sim["real_rows"] == 512 and sim["sim_shards"] == -(-19488 // 512)
    (run,) = r["open"]["runs"]
    assert run["rows"] == 20000 and run["warm_read_us"] > 0
    v = r["scale_verify"]
    assert v["samples_checked"] == 512 and v["bad"] == v["bad_missing_shards"] == sim["sim_shards"]
    assert r["scale_gc"]["files"] >= 2 * sim["sim_shards"]
    assert r["scale_compact"]["packed"] == 256 and r["scale_compact"]["rows_after"] == 20000 + 256
    assert not (tmp_path / "cache").exists()  # scratch removed without --keep
