"""Tests for latentds.train.vae (the KL-autoencoder trainer). Tiny models (16-32 channels),
32-px crops of SYNTHETIC phantoms, a handful of steps: CPU only, no network."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("lightning")

from latentds.codecs import create_codec  # noqa: E402
from latentds.train.vae.config import ConfigError, load_config  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
TINY = ROOT / "latentds" / "train" / "vae" / "configs" / "tiny-cpu.yaml"


def tiny(tmp_path: Path, *overrides: str) -> dict:
    return load_config([TINY], [f"trainer.out_dir={tmp_path}", *overrides])


def codec_tensors(path: str | Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path))


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"network access attempted: {args}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


# ----------------------------------------------------------------------------- config


def test_config_overrides_and_unknown_keys(tmp_path: Path) -> None:
    cfg = tiny(tmp_path, "optim.lr=1e-4", "model.f=4", "data.train.n=3", "data.crop=64")
    assert cfg["optim"]["lr"] == 1e-4 and cfg["model"]["f"] == 4 and cfg["data"]["train"]["n"] == 3
    with pytest.raises(ConfigError, match="unknown key"):
        tiny(tmp_path, "optim.lrr=1")
    with pytest.raises(ConfigError, match="multiple of model.f"):
        tiny(tmp_path, "data.crop=36")
    for name in ("f4c1", "f4c4", "f8c1", "f8c4", "f16c1", "f16c16"):
        cfg = load_config([ROOT / "latentds" / "train" / "vae" / "configs" / f"{name}.yaml"])
        from latentds.train.vae.module import arch_config

        a = arch_config(cfg["model"])
        f, c = int(name[1:name.index("c")]), int(name[name.index("c") + 1:])
        assert 2 ** (len(a["block_out_channels"]) - 1) == f and a["latent_channels"] == c and a["in_channels"] == 1


def test_patient_disjoint_split_and_crops(tmp_path: Path) -> None:
    import numpy as np
    from PIL import Image

    from latentds.train.vae.data import ImageBank, TrainCrops, items_from_source, patient_split

    rows = ["path,patient"]
    for i in range(12):
        arr = (np.random.default_rng(i).random((40 + i, 70)) * 255).astype(np.uint8)
        Image.fromarray(arr).save(tmp_path / f"im{i}.png")
        rows.append(f"im{i}.png,p{i // 3}")
    (tmp_path / "list.csv").write_text("\n".join(rows) + "\n")
    items = items_from_source({"source": "csv", "path": str(tmp_path / "list.csv"), "patient_column": "patient"})
    train, val = patient_split(items, 0.25, seed=0)
    assert len(train) + len(val) == 12 and val
    assert not {i.patient for i in train} & {i.patient for i in val}
    assert len({i.patient for i in val}) == 1
    bank = ImageBank(train, {"crop_roi": False})
    ds = TrainCrops(bank, {"crop": 32, "crop_mode": "mixed", "resized_scale": [0.5, 2.0]}, seed=3)
    a, b = ds[5]["image"], ds[5]["image"]
    assert a.shape == (1, 32, 32) and torch.equal(a, b) and a.min() >= -1 and a.max() <= 1
    assert not torch.equal(ds[5]["image"], ds[6]["image"])
    inv = TrainCrops(bank, {"crop": 32, "crop_mode": "mixed", "resized_scale": [0.5, 2.0],
                            "intensity_aug": {"invert_prob": 1.0}}, seed=3)
    assert float((inv[5]["image"] + a).abs().max()) < 1e-5  # 1 - x in [0, 1] is -x in [-1, 1]


def test_window_augmentation_saturates_and_is_deterministic(tmp_path: Path) -> None:
    from latentds.train.vae.data import ImageBank, TrainCrops, items_from_source

    bank = ImageBank(items_from_source({"source": "synthetic", "n": 2, "shape": [96, 96]}), {})
    plain = TrainCrops(bank, {"crop": 32, "crop_mode": "random"}, seed=1)
    win = TrainCrops(bank, {"crop": 32, "crop_mode": "random",
                            "intensity_aug": {"window_prob": 1.0, "window_width": [0.2, 0.2]}}, seed=1)
    sat = [float(((win[i]["image"].abs() == 1.0).float().mean())) for i in range(8)]
    base = [float(((plain[i]["image"].abs() == 1.0).float().mean())) for i in range(8)]
    assert max(sat) > 0.2 and sum(sat) > sum(base) + 0.5  # narrow windows clip large regions
    assert torch.equal(win[3]["image"], win[3]["image"])


def test_logvar_init_and_lr_schedule(tmp_path: Path) -> None:
    from latentds.train.vae.module import VAEModule

    cfg = tiny(tmp_path, "model.logvar_init=-10", "optim.schedule=cosine", "optim.warmup_steps=2",
               "optim.min_lr_ratio=0.1", "trainer.steps=12")
    m = VAEModule(cfg)
    plain = VAEModule(tiny(tmp_path))
    with torch.no_grad():
        post = m.vae.encode(torch.rand(2, 1, 32, 32) * 2 - 1).latent_dist
        assert torch.allclose(post.logvar, torch.full_like(post.logvar, -10.0))
        assert float(plain.vae.encode(torch.rand(2, 1, 32, 32)).latent_dist.logvar.abs().max()) < 5
    f = [m.lr_factor(s) for s in range(13)]
    assert f[0] == pytest.approx(0.5) and f[1] == pytest.approx(1.0) and f[2] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(f[2:], f[3:])) and f[12] == pytest.approx(0.1)
    assert plain.lr_factor(0) == plain.lr_factor(10_000) == 1.0
    with pytest.raises(ConfigError, match="optim.schedule"):
        tiny(tmp_path, "optim.schedule=linear")


# ----------------------------------------------------------------------------- training


def test_few_steps_lower_the_loss_offline(tmp_path: Path, no_network: None, monkeypatch: pytest.MonkeyPatch) -> None:
    from latentds.train.vae.run import fit

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    cfg = tiny(tmp_path, "trainer.steps=10", "loss.disc_start=100", "optim.lr=1e-3", "trainer.val_every=100",
               "trainer.ckpt_every=100", "data.train.n=2", "data.val_fraction=0")
    from latentds.train.vae.data import ImageBank, TrainCrops, items_from_source
    from latentds.train.vae.module import VAEModule

    bank = ImageBank(items_from_source(cfg["data"]["train"]), {})
    crops = TrainCrops(bank, {**cfg["data"], "crop_mode": "random", "crop": 64}, seed=99)
    x = torch.stack([torch.from_numpy(crops.crop_array(i))[None] for i in range(6)])
    x = x[x.flatten(1).std(1).argsort(descending=True)[:4]]  # textured crops, not background

    def l1(model: torch.nn.Module) -> float:
        with torch.no_grad():
            y = model.decode(model.encode(x * 2 - 1).latent_dist.mean).sample
        return float(((y + 1) / 2 - x).abs().mean())

    before = l1(VAEModule(cfg).vae.eval())
    res = fit(cfg)
    assert res["perceptual"].startswith("ms-ssim")
    after = l1(create_codec(res["codec_last"]).model)
    assert after < 0.85 * before, (before, after)


def test_gradient_accumulation_equals_larger_batch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two micro-batches of 1 accumulate to the generator gradient of one batch of 2."""
    from latentds.train.vae import module as vm
    from latentds.train.vae.run import fit

    grads: list[dict[str, torch.Tensor]] = []
    step = vm.VAEModule._step

    def spy(self: vm.VAEModule, opt: object, raw: bool) -> None:
        if not raw:
            grads.append({n: p.grad.clone() for n, p in self.vae.named_parameters() if p.grad is not None})
        step(self, opt, raw)

    monkeypatch.setattr(vm.VAEModule, "_step", spy)
    common = ["trainer.steps=1", "loss.disc_start=100", "trainer.val_every=100", "data.val_fraction=0",
              "trainer.export=false"]
    fit(tiny(tmp_path / "a", *common, "data.batch_size=2", "trainer.accumulate=1"))
    fit(tiny(tmp_path / "b", *common, "data.batch_size=1", "trainer.accumulate=2"))
    fit(tiny(tmp_path / "c", *common, "data.batch_size=1", "trainer.accumulate=1"))
    assert len(grads) == 3  # one generator update per run
    ga, gb, gc = grads
    assert ga.keys() == gb.keys() and len(ga) > 10

    def rel(g: dict[str, torch.Tensor]) -> float:  # over all tensors (to_k.bias grads are ~0: noise)
        a = torch.cat([ga[k].flatten() for k in ga])
        return float((a - torch.cat([g[k].flatten() for k in ga])).norm() / a.norm())

    assert rel(gb) < 1e-4, rel(gb)
    assert rel(gc) > 1e-2  # one micro-batch alone is a different gradient


def test_resume_continues_the_same_run(tmp_path: Path) -> None:
    from latentds.train.vae.run import fit

    # disc_start=2: the adversarial phase starts exactly at the resume point
    full = fit(tiny(tmp_path / "full", "trainer.steps=4", "loss.disc_start=2"))
    half = tiny(tmp_path / "split", "trainer.steps=2", "loss.disc_start=2")
    fit(half)
    rest = fit(tiny(tmp_path / "split", "trainer.steps=4", "loss.disc_start=2", "trainer.resume=last"))
    assert rest["gen_step"] == 4
    t_full, t_rest = codec_tensors(full["codec_last"]), codec_tensors(rest["codec_last"])
    assert t_full.keys() == t_rest.keys()
    for k in t_full:
        assert torch.equal(t_full[k], t_rest[k]), k
    d_full = torch.load(full["last"], weights_only=True)["state_dict"]
    d_rest = torch.load(rest["last"], weights_only=True)["state_dict"]
    for k in d_full:
        if k.startswith("disc."):
            assert torch.equal(d_full[k], d_rest[k]), k


def test_bf16_mixed_runs(tmp_path: Path) -> None:
    from latentds.train.vae.run import fit

    res = fit(tiny(tmp_path, "trainer.steps=2", "loss.disc_start=1", "trainer.precision=bf16-mixed",
                   "trainer.val_every=100", "trainer.export=false"))
    assert res["gen_step"] == 2


def test_ddp_two_ranks_keep_identical_weights(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
           "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "latentds.train.vae", "fit", "-c", str(TINY), "--set", f"trainer.out_dir={tmp_path}",
           "trainer.devices=2", "trainer.strategy=ddp", "trainer.steps=3", "loss.disc_start=1",
           "trainer.val_every=100", "trainer.export=false"]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-4000:]
    rec = json.loads((tmp_path / "kl-f8c4" / "rank_weights.json").read_text())
    assert rec["gen_step"] == 3 and len(rec["hashes"]) == 2
    assert rec["hashes"][0] == rec["hashes"][1]


# ----------------------------------------------------------------------------- export / init


def test_export_loads_through_create_codec_and_encodes_deterministically(tmp_path: Path) -> None:
    from latentds.train.vae.run import export_checkpoint, fit

    res = fit(tiny(tmp_path, "trainer.steps=2"))
    out = export_checkpoint(res["best"], tmp_path / "mine.safetensors")
    by_name = create_codec("kl-f8c4", weights=out)
    by_path = create_codec(str(out))
    x = torch.rand(2, 1, 64, 48)
    z1, z2, z3 = by_name.encode(x), by_name.encode(x), by_path.encode(x)
    assert z1.shape == (2, 4, 8, 6)
    assert torch.equal(z1, z2) and torch.equal(z1, z3)
    assert by_name.fingerprint == by_path.fingerprint
    other = create_codec(res["codec_last"])
    assert other.weights_sha256 != create_codec("kl-f8c4", weights="random", arch=by_name.config).weights_sha256
    # CLI export
    from latentds.train.vae.cli import main

    assert main(["export", res["last"], str(tmp_path / "cli.safetensors")]) == 0
    assert create_codec(str(tmp_path / "cli.safetensors")).weights_sha256 == other.weights_sha256


def test_init_from_medvae_and_sd_vae_checkpoints(tmp_path: Path, no_network: None) -> None:
    sys.path.insert(0, str(ROOT / "tests"))
    from test_codecs import ldm_state_dict

    from latentds.train.vae.module import VAEModule

    # MedVAE f4/C1 (1 channel, ldm layout, {"state_dict": ...})
    sd = ldm_state_dict(ch=32, ch_mult=(1, 2, 2), z=1, in_ch=1, medvae_head=True)
    torch.save({"state_dict": sd}, tmp_path / "vae_4x_1c_2D.ckpt")
    cfg = tiny(tmp_path, "model.f=4", "model.latent_channels=1", "init.codec=medvae-f4c1",
               f"init.weights={tmp_path / 'vae_4x_1c_2D.ckpt'}", "init.arch={block_out_channels: [32, 64, 64]}")
    m = VAEModule(cfg)
    ref = create_codec("medvae-f4c1", weights=tmp_path / "vae_4x_1c_2D.ckpt", arch={"block_out_channels": [32, 64, 64]})
    x = torch.rand(1, 1, 32, 32)
    with torch.no_grad():
        z = m.vae.encode(x * 2 - 1).latent_dist.mean
    assert torch.allclose(z, ref.encode(x), atol=1e-5)

    # SD-VAE f8/C4 (3 channels): the 1-channel adaptation reproduces the codec's gray use
    sd3 = ldm_state_dict(ch=32, ch_mult=(1, 2, 2, 2), z=4, in_ch=3, seed=5)
    torch.save({"state_dict": sd3}, tmp_path / "kl-f8.ckpt")
    arch = "{block_out_channels: [32, 64, 64, 64]}"
    cfg = tiny(tmp_path, "init.codec=sd-vae-f8c4", f"init.weights={tmp_path / 'kl-f8.ckpt'}", f"init.arch={arch}")
    m = VAEModule(cfg)
    ref = create_codec("sd-vae-f8c4", weights=tmp_path / "kl-f8.ckpt", arch={"block_out_channels": [32, 64, 64, 64]})
    with torch.no_grad():
        post = m.vae.encode(x * 2 - 1).latent_dist.mean
        y = ((m.vae.decode(post).sample + 1) / 2).clamp(0, 1)
    assert torch.allclose(post, ref.encode(x), atol=1e-4)
    assert torch.allclose(y, ref.decode(ref.encode(x)), atol=1e-4)
    assert m.vae.config.in_channels == 1 and m.vae.config.out_channels == 1


def test_lpips_from_local_files_and_ms_ssim_fallback(tmp_path: Path, no_network: None) -> None:
    from torchvision.models.vgg import cfgs, make_layers

    from latentds.train.vae.losses import build_perceptual

    mod, desc = build_perceptual({"kind": "auto", "weight": 1.0, "weights_path": None})
    assert desc.startswith("ms-ssim")
    heads = {f"lin{i}.model.1.weight": torch.rand(1, c, 1, 1) for i, c in enumerate((64, 128, 256, 512, 512))}
    torch.save(heads, tmp_path / "vgg.pth")
    torch.save({f"features.{k}": v for k, v in make_layers(cfgs["D"]).state_dict().items()},
               tmp_path / "vgg16.pth")
    mod, desc = build_perceptual({"kind": "auto", "weight": 1.0, "weights_path": str(tmp_path / "vgg.pth"),
                                  "vgg_path": str(tmp_path / "vgg16.pth")})
    assert desc.startswith("lpips")
    x = torch.rand(2, 1, 32, 32) * 2 - 1
    assert float(mod(x, x).abs().max()) < 1e-6
    assert float(mod(x, x.flip(-1)).min()) > 0
    with pytest.raises(FileNotFoundError, match="nothing is downloaded"):
        build_perceptual({"kind": "lpips", "weight": 1.0, "weights_path": str(tmp_path / "vgg.pth"),
                          "vgg_path": str(tmp_path / "missing.pth")})
