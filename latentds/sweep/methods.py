"""Which rows a sweep runs: full size, bicubic, learned codecs with local weights, their s2d
baselines at the same (f, C) and the lossless controls."""

from __future__ import annotations

import re
from typing import Sequence

from .config import BICUBIC, FULL
from .rows import control_method


def _weightless(name: str) -> bool:
    """Codecs that need no weights (bicubic, space-to-depth): baselines, not learned codecs."""
    return name.startswith(("bicubic", "s2d-"))


def _fc(name: str) -> tuple[int, int] | None:
    m = re.search(r"-f(\d+)c(\d+)$", name)
    return (int(m.group(1)), int(m.group(2))) if m else None


def with_controls(methods: Sequence[str], *, baselines: bool = True) -> list[str]:
    """``methods`` plus, for every f among them, the lossless control ``s2d-f{f}c{f²}`` and
    (``baselines``) ``s2d-f{f}c{C}`` at the (f, C) of every learned codec among them, where
    such an s2d codec exists (C a square whose root divides f). Order: full size, bicubic,
    controls, s2d baselines, the rest as given."""
    from ..codecs import create_codec, list_codecs

    known = set(list_codecs())
    names = [parse_method(m)[0] for m in methods]
    fs = set()
    for m in names:
        if m == FULL:
            continue
        fc = _fc(m)
        if fc:
            fs.add(fc[0])
        elif m in known:
            try:
                fs.add(int(create_codec(m).f))
            except Exception:  # noqa: BLE001 - a codec that cannot be built is reported when it runs
                pass
    extra = [control_method(f) for f in sorted(fs) if control_method(f) in known]
    if baselines:
        for m in names:
            fc = _fc(m)
            if fc and not _weightless(m) and m != FULL and fc[1] > 1:
                cand = f"s2d-f{fc[0]}c{fc[1]}"
                if cand in known and cand not in extra:
                    extra.append(cand)
    out = [m for m in methods if parse_method(m)[0] == FULL]
    out += [m for m in methods if parse_method(m)[0].startswith("bicubic")]
    out += [m for m in extra if m not in methods]
    out += [m for m in methods if m not in out]
    return list(dict.fromkeys(out))


def default_methods() -> list[str]:
    """Full size, bicubic f=4/8/16, every learned codec with weights, and their controls and
    s2d baselines (:func:`with_controls`)."""
    return with_controls(available_methods())


def available_methods(*, include_kl: bool = True) -> list[str]:
    """Full size, bicubic f=4/8/16, and every registered KL / SD VAE / MedVAE codec whose
    weights load locally (no downloads; a codec without weights raises CodecError and is left
    out). Weight-less baselines (s2d) are not listed here: :func:`with_controls` adds them."""
    from ..codecs import create_codec, list_codecs
    from ..errors import CodecError

    methods = [FULL] + [m for m in BICUBIC if m in list_codecs()]
    if include_kl:
        for name in list_codecs():
            if _weightless(name):
                continue
            try:
                create_codec(name)
            except CodecError:
                continue
            except Exception as e:  # a broken local weights file: say so, keep sweeping
                print(f"  skipping {name}: {type(e).__name__}: {e}")
                continue
            methods.append(name)
    return methods


def parse_method(method: str) -> tuple[str, str | None]:
    """``NAME`` or ``NAME=WEIGHTS``: a registered codec, optionally with your own weights file
    (e.g. ``kl-f8c1=runs/vae/kl-f8c1/codec-best.safetensors``); NAME labels the row."""
    from ..errors import ConfigError

    name, sep, weights = method.partition("=")
    if sep and not weights:
        raise ConfigError(f"method {method!r}: empty weights path after '='; write NAME or NAME=WEIGHTS_FILE")
    return name, (weights or None)


def check_methods(methods: Sequence[str]) -> None:
    """Build every row's codec once before the sweep starts, so an unknown name, a codec without
    weights or a missing weights file is one error at once, not after hours of earlier rows."""
    from ..codecs import create_codec
    from ..errors import CodecError

    for m in methods:
        name, weights = parse_method(m)
        if name == FULL:
            continue
        try:
            create_codec(name, **({"weights": weights} if weights else {}))
        except CodecError as exc:
            raise CodecError(f"sweep method {m!r}: {exc}") from None


def unavailable_codecs(methods: Sequence[str]) -> list[str]:
    from ..codecs import list_codecs

    names = {parse_method(m)[0] for m in methods}
    return [c for c in list_codecs() if not _weightless(c) and c not in names]


__all__ = ["available_methods", "check_methods", "default_methods", "parse_method", "unavailable_codecs", "with_controls"]
