"""A user's mistakes through the Python API, as a user swapping ImageFolder for LatentDataset
makes them (H3 audit): each is a typed LatentdsError naming the thing at fault and the fix, not a
bare ValueError / NotADirectoryError from fsspec or the OS."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from latentds import LatentDataset
from latentds.errors import CacheError, ConfigError


@pytest.fixture()
def tree(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    for c in ("a", "b"):
        (tmp_path / "tree" / c).mkdir(parents=True)
        Image.fromarray(rng.integers(0, 255, (40, 56), dtype=np.uint8)).save(tmp_path / "tree" / c / "0.png")
    return tmp_path / "tree"


@pytest.mark.parametrize("where", ["cache", "root"])
def test_a_typo_in_a_url_protocol_names_it(tree: Path, tmp_path: Path, where: str) -> None:
    """Was ``ValueError: Protocol not known: s4`` (no URL, no hint); still a ValueError for callers."""
    kw = {"root": tree, "cache": tmp_path / "cache"}
    kw[where] = "s4://bucket/prefix"
    with pytest.raises(ConfigError, match=r"s4://bucket/prefix.*unknown storage protocol 's4'.*s3://") as info:
        LatentDataset(kw.pop("root"), codec="bicubic-f8", **kw)[0]
    assert isinstance(info.value, ValueError)


def test_a_cache_that_is_a_file_names_it(tree: Path, tmp_path: Path) -> None:
    """Was ``NotADirectoryError: .../CURRENT.json`` on the first access."""
    f = tmp_path / "notes.txt"
    f.write_text("not a cache")
    with pytest.raises(CacheError, match=r"notes.txt.*is a file, not a folder"):
        LatentDataset(tree, codec="bicubic-f8", cache=f)[0]


@pytest.mark.slow
def test_ctrl_c_during_a_dask_encode_is_one_line_and_resumable(tmp_path: Path) -> None:
    """Ctrl-C reaches the whole foreground process group, Dask's worker processes included: each
    printed a KeyboardInterrupt / CancelledError / CommClosedError traceback (~80 lines) around
    'latentds: interrupted'. The client alone handles it now; a re-run finishes the job."""
    import glob
    import os
    import signal
    import subprocess
    import sys
    import time

    rng = np.random.default_rng(1)
    for c in ("a", "b"):
        (tmp_path / "src" / c).mkdir(parents=True)
        for i in range(40):
            Image.fromarray(rng.integers(0, 255, (96, 80), dtype=np.uint8)).save(tmp_path / "src" / c / f"{i:02d}.png")
    cache = tmp_path / "cache"
    argv = [sys.executable, "-m", "latentds", "encode", str(tmp_path / "src"), "--codec", "kl-f8c4", "--cache",
            str(cache), "--workers", "1", "--shard-samples", "4", "--torch-threads", "1", "--quiet"]
    env = {k: v for k, v in os.environ.items() if k != "LATENTDS_DEBUG"}
    p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                         start_new_session=True,  # its own group, as a terminal's foreground job
                         preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + 240
    while not glob.glob(str(cache / "*" / "bulk" / "*.json")) and p.poll() is None and time.time() < deadline:
        time.sleep(0.1)
    assert p.poll() is None, "finished before it could be interrupted"
    os.killpg(p.pid, signal.SIGINT)  # what Ctrl-C does: the group, workers too
    _, err = p.communicate(timeout=120)
    assert p.returncode == 130, err
    assert "Traceback" not in err and err.strip().splitlines()[-1] == "latentds: interrupted", err
    done = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0 and "0 failed" in done.stdout and "already committed" in done.stdout, done


@pytest.mark.parametrize("argv,fragment", [
    (["train-probe", "data.codec=bicubic-f8"], "data.root is required"),
    (["train-probe", "optim.lrr=1"], "unknown config key 'optim.lrr'"),
    (["train-probe", "model.mode=half"], "model.mode must be one of"),
    (["train-probe", "optim.epochs"], "is not key=value"),
    (["train-vae", "export", "/does/not/exist.ckpt", "out.safetensors"], "/does/not/exist.ckpt"),
], ids=["no-data-root", "unknown-key", "bad-mode", "not-key-value", "export-missing-checkpoint"])
def test_a_trainer_mistake_is_one_line(argv: list[str], fragment: str, capsys: pytest.CaptureFixture) -> None:
    """Were ValueError / KeyError / FileNotFoundError tracebacks (train-probe's config, train-vae export)."""
    pytest.importorskip("lightning")
    from latentds.cli import main

    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "error: " in err and fragment in err, (code, err)


@pytest.mark.parametrize("cmd", [["train-vae", "--help"], ["review", "--help"]])
def test_every_help_has_examples(cmd: list[str], capsys: pytest.CaptureFixture) -> None:
    """README: 'Every subcommand has a --help with examples'; these two had none."""
    from latentds.cli import main

    with pytest.raises(SystemExit) as exc:
        main(cmd)
    assert exc.value.code == 0 and "examples:" in capsys.readouterr().out


def test_normalize_on_a_fresh_cache_says_to_fill_then_compact(tree: Path, tmp_path: Path) -> None:
    """The README's normalize=True on a first run: compact alone commits nothing from an empty
    cache, so the message said a step that could not help; it now says fill, then compact."""
    kw = {"codec": "bicubic-f8", "cache": tmp_path / "cache", "image_size": (64, 48)}
    ds = LatentDataset(tree, normalize=True, **kw)
    with pytest.raises(CacheError, match=r"dataset\.fill\(\) then dataset\.compact\(\)"):
        ds[0]
    ds.fill(progress=False)
    ds.compact()
    x, _ = LatentDataset(tree, normalize=True, **kw)[0]
    assert x.shape == (1, 8, 6)


def test_weights_of_another_f_c_say_how_to_load_them_from_the_command_line(tree: Path, tmp_path: Path,
                                                                           capsys: pytest.CaptureFixture) -> None:
    """--codec kl-f8c4 --weights <a kl-f4c4 file>: the fix was given in Python only (create_codec(path))."""
    from latentds.cli import main
    from latentds.codecs import create_codec, save_kl_codec

    small = {"block_out_channels": [16, 16, 16], "layers_per_block": 1, "norm_num_groups": 8}
    path = save_kl_codec(create_codec("kl-f4c4", weights="random", arch=small), tmp_path / "f4c4.safetensors",
                         name="kl-f4c4")
    code = main(["encode", str(tree), "--codec", "kl-f8c4", "--weights", str(path), "--cache", str(tmp_path / "c")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "f=4, C=4" in err and f"--codec {path}" in err, err


class _Unchecked:
    """A user's first codec (H3 audit): encodes and decodes, but checks no input."""

    name, f, latent_channels = "my-avg-f4", 4, 1
    device = None

    def encode(self, x):
        import torch

        return torch.nn.functional.avg_pool2d(x, 4, ceil_mode=True)

    def decode(self, z):
        import torch

        return torch.nn.functional.interpolate(z, scale_factor=4).clamp(0, 1)


def test_the_codec_conformance_failure_says_how_to_check_inputs() -> None:
    """Was only 'a 3-D tensor did not raise CodecError': which helper does it, it did not say."""
    from latentds.testing.codec_conformance import check_input_errors

    with pytest.raises(AssertionError, match=r"my-avg-f4: a 3-D tensor did not raise CodecError.*check_image_batch"):
        check_input_errors(_Unchecked())


def _upload(tree: Path, s3_env, bucket: str) -> str:
    import s3fs

    fs = s3fs.S3FileSystem(**s3_env.options(), skip_instance_cache=True)
    for p in sorted(tree.rglob("*.png")):
        fs.put_file(str(p), f"{bucket}/src/{p.relative_to(tree).as_posix()}")
    return f"s3://{bucket}/src"


def test_a_cache_bucket_that_does_not_exist_is_one_line(tree: Path, tmp_path: Path, s3_env,
                                                        capsys: pytest.CaptureFixture) -> None:
    """Was a FileNotFoundError traceback ('The specified bucket does not exist') from the first
    write, when that write was a failure record rather than a latent."""
    import json

    from latentds.cli import main

    (tree / "b" / "broken.png").write_bytes(b"")  # its failure record is the first write
    src = _upload(tree, s3_env, s3_env.new_bucket())
    code = main(["encode", src, "--codec", "bicubic-f8", "--cache", "s3://no-such-bucket-h3/lat", "--quiet",
                 "--storage-options", json.dumps(s3_env.options())])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("latentds: error: ") and "no-such-bucket-h3" in err, err
    assert "does not exist" in err and "Traceback" not in err, err


def test_a_bucket_source_without_credentials_is_one_line(tree: Path, s3_env, monkeypatch: pytest.MonkeyPatch,
                                                         capsys: pytest.CaptureFixture) -> None:
    """Was botocore's NoCredentialsError traceback from the listing of the source."""
    from latentds.cli import main

    src = _upload(tree, s3_env, s3_env.new_bucket())
    for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_PROFILE", "AWS_SHARED_CREDENTIALS_FILE"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent")
    code = main(["encode", src, "--codec", "bicubic-f8", "--cache", "memory://h3-nocreds", "--quiet",
                 "--storage-options", '{"client_kwargs": {"endpoint_url": "%s"}}' % s3_env.proxy.endpoint])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("latentds: error: ") and "credentials" in err, err
