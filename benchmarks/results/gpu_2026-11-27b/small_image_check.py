import sys, torch
from latentds.codecs import create_codec
from latentds.metrics import psnr
from latentds.testing.synthetic import phantom
torch.set_num_threads(1)
for path in sys.argv[1:]:
    codec = create_codec(path)
    s2d = create_codec(f"s2d-f{codec.f}c{codec.latent_channels}")
    out=[]
    for seed, kind in ((10_000, "calcification"), (10_001, "fracture")):
        pos = torch.from_numpy(phantom(seed, (192, 160), positive=True, kind=kind))[None, None]
        neg = torch.from_numpy(phantom(seed, (192, 160), positive=False, kind=kind))[None, None]
        rk = [c.decode(c.encode(v))[..., :192, :160] for c in (codec, s2d) for v in (pos, neg)]
        d = float(psnr(pos, rk[0])) - float(psnr(pos, rk[2]))
        mask = (pos - neg).abs() > 1e-3
        err_kl = float((((rk[0] - rk[1]) - (pos - neg))[mask] ** 2).mean())
        err_s2d = float((((rk[2] - rk[3]) - (pos - neg))[mask] ** 2).mean())
        out.append(f"{kind}: psnr {d:+.3f} dB, finding err ratio {err_kl/err_s2d:.3f}")
    print(path.split('gpu_out2/')[-1], "|", "; ".join(out), flush=True)
