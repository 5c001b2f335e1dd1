"""Multiply-accumulate (MAC) counting with the rule that reproduces the paper's FLOPS column.

Table 1 of the paper reports "GigaFLOPS" of ``timm`` ``hrnet_w64`` (one output class,
``in_chans=C``) at input ``1024/f`` square. The figures are GMACs (one multiply-add counts
once) as fvcore's ``FlopCountAnalysis`` reports them with the model in train mode:

* convolutions and matrix products: MACs (``prod(weight) * prod(out spatial)``; bias free);
* batch norm (and group / layer / instance norm): 5 per element when affine, else 4
  (fvcore's training-mode estimate; 2 / 1 in eval mode);
* nearest upsampling: 1 per output element; bilinear: 4 per output element;
* adaptive average pooling (and ``mean``, which ATen lowers global pooling to): 1 per input
  element;
* everything else (ReLU, residual additions, max pooling, ...): 0.

``torch.utils.flop_counter`` alone counts only the first item (603.51 GMACs at 1024²
against the paper's 607.33); the rule above gives 607.28 and keeps every one of the 13
rows within 0.1 % (see ``docs/flops.md`` and ``benchmarks/flops.py``).

The paper's rule charges batch norm its training-mode cost whatever mode the model is in, so
``count_macs`` runs the model in eval mode (restored after): counting then never fails on an
input the model takes (training-mode batch norm refuses a batch of one on a 1×1 map, which is
HRNet's lowest branch at 32×32 inputs).

The counting runs torch's own :class:`~torch.utils.flop_counter.FlopCounterMode` with extra
formulas registered for the norm, upsampling and pooling ops, on the ``meta`` device by
default: no arithmetic is done, so ``hrnet_w64`` at 1024² is counted in well under a second
and a real model's weights are never touched.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from math import prod
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

from .errors import LatentdsError

aten = torch.ops.aten


class FlopCountError(LatentdsError):
    """A model's forward failed while its MACs were counted (the message says which model,
    input shape and rule were not counted)."""


#: The rule that reproduces the paper's figures: fvcore's counts with batch norm in train mode.
PAPER_RULE = "fvcore-train"

#: Known rules. ``conv-only``: torch.utils.flop_counter's built-in formulas (convolutions,
#: matrix products, attention). ``fvcore``: those plus fvcore's norm / upsample / pooling
#: formulas, with batch norm counted as the op says (train or eval). ``fvcore-train`` /
#: ``fvcore-eval``: the same with batch norm always counted as in train (5/element) or eval
#: (2/element) mode, whatever mode the model is in.
RULES: tuple[str, ...] = ("conv-only", "fvcore", "fvcore-train", "fvcore-eval")


def _numel(shape: Any) -> int:
    return int(prod(shape)) if shape is not None else 0


def _training_flag(args: tuple, kwargs: dict) -> bool:
    """The ``training`` argument of a batch-norm op: its first bool argument."""
    if "training" in kwargs:
        return bool(kwargs["training"])
    for a in args[1:]:
        if isinstance(a, bool):
            return a
    return False


# Every formula returns FLOPs as torch's registry counts them (2 per MAC), so that the total
# divided by 2 is MACs for built-in and added formulas alike.

def _batch_norm_formula(bn_mode: str, *, no_training: bool = False) -> Callable[..., int]:
    def formula(*args: Any, out_shape: Any = None, **kwargs: Any) -> int:
        x = args[0]
        affine = len(args) > 1 and args[1] is not None
        if bn_mode == "train":
            training = True
        elif bn_mode == "eval":
            training = False
        else:
            training = False if no_training else _training_flag(args, kwargs)
        per_element = (5 if affine else 4) if training else (2 if affine else 1)
        return 2 * per_element * _numel(x)
    return formula


def _affine_norm_formula(weight_index: int) -> Callable[..., int]:
    def formula(*args: Any, out_shape: Any = None, **kwargs: Any) -> int:
        affine = len(args) > weight_index and args[weight_index] is not None
        return 2 * (5 if affine else 4) * _numel(args[0])
    return formula


def _output_formula(per_element: int) -> Callable[..., int]:
    def formula(*args: Any, out_shape: Any = None, **kwargs: Any) -> int:
        if not isinstance(out_shape, torch.Size) and isinstance(out_shape, (tuple, list)):
            out_shape = out_shape[0]  # ops with several outputs: the first is the result
        return 2 * per_element * _numel(out_shape)
    return formula


def _input_formula(per_element: int) -> Callable[..., int]:
    def formula(*args: Any, out_shape: Any = None, **kwargs: Any) -> int:
        return 2 * per_element * _numel(args[0])
    return formula


def _packets(*names: str) -> list[Any]:
    """The ATen op packets among ``names`` that this torch build has."""
    return [getattr(aten, n) for n in names if hasattr(aten, n)]


def formulas(rule: str = PAPER_RULE) -> dict[Any, Callable[..., int]]:
    """The formulas ``rule`` adds to torch's registry, keyed by ATen op packet (for
    ``FlopCounterMode(custom_mapping=...)``). Each returns 2 × MACs, like torch's own."""
    if rule not in RULES:
        raise ValueError(f"unknown counting rule {rule!r}; known: {', '.join(RULES)}")
    if rule == "conv-only":
        return {}
    bn_mode = {"fvcore": "op", "fvcore-train": "train", "fvcore-eval": "eval"}[rule]
    out: dict[Any, Callable[..., int]] = {}
    for op in _packets("native_batch_norm", "_native_batch_norm_legit", "_native_batch_norm_legit_functional",
                       "cudnn_batch_norm", "miopen_batch_norm"):
        out[op] = _batch_norm_formula(bn_mode)
    for op in _packets("_native_batch_norm_legit_no_training"):
        out[op] = _batch_norm_formula(bn_mode, no_training=True)
    for op in _packets("native_group_norm", "native_layer_norm"):
        # native_group_norm(input, weight, bias, N, C, HxW, group, eps)
        # native_layer_norm(input, normalized_shape, weight, bias, eps)
        out[op] = _affine_norm_formula(1 if op is aten.native_group_norm else 2)
    for op in _packets("upsample_nearest1d", "upsample_nearest2d", "upsample_nearest3d",
                       "_upsample_nearest_exact1d", "_upsample_nearest_exact2d", "_upsample_nearest_exact3d"):
        out[op] = _output_formula(1)
    for op in _packets("upsample_bilinear2d", "_upsample_bilinear2d_aa"):
        out[op] = _output_formula(4)
    for op in _packets("adaptive_avg_pool2d", "_adaptive_avg_pool2d", "mean"):
        out[op] = _input_formula(1)
    # FlopCounterMode decomposes an op overload that is not itself a registry key before it
    # looks its packet up (upsample_nearest2d, for one, would decompose into indexing and
    # never be counted), so every overload of a counted packet is registered as well.
    for op, formula in list(out.items()):
        for name in op.overloads():
            out[getattr(op, name)] = formula
    return out


@dataclass(frozen=True)
class MacCount:
    """The MACs of one forward pass: ``total`` and ``by_op`` (ATen op name -> MACs)."""

    total: int
    by_op: dict[str, int] = field(default_factory=dict)
    rule: str = PAPER_RULE

    @property
    def gmacs(self) -> float:
        return self.total / 1e9


def _full_shape(input_shape: Sequence[int]) -> tuple[int, ...]:
    shape = tuple(int(s) for s in input_shape)
    if len(shape) < 2 or any(s <= 0 for s in shape):
        raise ValueError(f"input_shape must be positive (N, C, H, W) or (C, H, W), got {tuple(input_shape)}")
    return (1, *shape) if len(shape) == 3 else shape


def _on_meta(model: torch.nn.Module) -> bool:
    tensors = [*model.parameters(), *model.buffers()]
    return all(t.device.type == "meta" for t in tensors)


def count_macs(model: torch.nn.Module, input_shape: Sequence[int], *, rule: str = PAPER_RULE,
               device: str | torch.device | None = "meta") -> MacCount:
    """Count the MACs of ``model(torch.zeros(input_shape))`` under ``rule``.

    ``input_shape`` is ``(N, C, H, W)`` (counts are for the whole batch) or ``(C, H, W)``
    (batch of one). With ``device="meta"`` (default) nothing is computed: a model on the meta
    device runs as is; a model with real weights runs through
    :func:`torch.func.functional_call` with meta stand-ins for its parameters and buffers,
    so its weights and running statistics are left untouched. ``device=None`` runs the model
    where it is, on a real zero input (for models whose forward cannot run on meta).
    The count runs in eval mode (restored after) under every rule but ``fvcore``, whose batch
    norm count follows the model's mode: the count cannot then fail on an input the model takes
    in eval mode. A forward that fails raises :class:`FlopCountError`, naming the model and shape.
    """
    mapping = formulas(rule)
    shape = _full_shape(input_shape)
    if device is not None and torch.device(device).type != "meta":
        raise ValueError(f"device must be 'meta' or None, got {device!r}")
    counter = FlopCounterMode(display=False, custom_mapping=mapping)
    # Under every rule but "fvcore" the count does not depend on the mode, so it runs in eval
    # mode: training-mode batch norm refuses a batch of one on a 1x1 map (HRNet's lowest branch
    # at 32x32 inputs), a valid input that must not fail the count. Modes are restored after.
    flags = {m: m.training for m in model.modules()}
    try:
        if rule != "fvcore":
            model.eval()
        with torch.no_grad():
            if device is None:
                ref = next(iter([*model.parameters(), *model.buffers()]), None)
                x = torch.zeros(shape, device=ref.device if ref is not None else "cpu")
                with counter:
                    model(x)
            else:
                x = torch.zeros(shape, device="meta")
                if _on_meta(model):
                    with counter:
                        model(x)
                else:
                    stand_ins = {name: torch.empty_like(t, device="meta")
                                 for name, t in [*model.named_parameters(remove_duplicate=False),
                                                 *model.named_buffers(remove_duplicate=False)]}
                    with counter:
                        torch.func.functional_call(model, stand_ins, (x,), tie_weights=True, strict=False)
    except Exception as exc:  # noqa: BLE001 - reported as what was not counted
        where = "on the meta device" if device is not None else "on a real zero input"
        lines = str(exc).strip().splitlines()
        raise FlopCountError(
            f"the MACs of {type(model).__name__} at input {'x'.join(map(str, shape))} ({rule} rule, {where}) "
            f"were not counted: {type(exc).__name__}: {lines[0] if lines else ''}") from exc
    finally:
        for m, flag in flags.items():
            m.training = flag
    by_op = {str(k): int(v) // 2 for k, v in counter.get_flop_counts().get("Global", {}).items()}
    return MacCount(total=int(counter.get_total_flops()) // 2, by_op=by_op, rule=rule)


def gmacs(model: torch.nn.Module, input_shape: Sequence[int], *, rule: str = PAPER_RULE,
          device: str | torch.device | None = "meta") -> float:
    """GMACs (10^9 multiply-accumulates) of one forward pass; see :func:`count_macs`."""
    return count_macs(model, input_shape, rule=rule, device=device).gmacs


def create_meta_model(model_name: str = "hrnet_w64", *, in_chans: int = 1, num_classes: int = 1,
                      **kwargs: Any) -> torch.nn.Module:
    """A ``timm`` model built on the meta device (no weights allocated), in eval mode."""
    try:
        import timm
    except ImportError as e:  # timm is in the 'train' extra
        raise ImportError("counting timm models needs timm: pip install 'latentds[train]'") from e
    with torch.device("meta"):
        model = timm.create_model(model_name, pretrained=False, num_classes=num_classes, in_chans=in_chans, **kwargs)
    return model.eval()


def hrnet_gmacs(f: int, C: int, image_size: int = 1024, *, rule: str = PAPER_RULE,
                model_name: str = "hrnet_w64", num_classes: int = 1) -> float:
    """GMACs of ``timm`` ``model_name`` (``num_classes`` outputs, ``in_chans=C``) on one
    ``image_size/f`` square input: the paper's Table 1 FLOPS column (``f=1`` is full size)."""
    f, C, image_size = int(f), int(C), int(image_size)
    if f < 1 or C < 1 or image_size < 1:
        raise ValueError(f"f, C and image_size must be positive, got f={f}, C={C}, image_size={image_size}")
    if image_size % f:
        raise ValueError(f"image_size {image_size} is not divisible by f={f}")
    side = image_size // f
    model = _cached_meta_model(model_name, C, num_classes)
    return gmacs(model, (1, C, side, side), rule=rule)


@functools.lru_cache(maxsize=32)
def _cached_meta_model(model_name: str, in_chans: int, num_classes: int) -> torch.nn.Module:
    # Meta models hold no storage; building hrnet_w64 costs more than counting it. Only
    # hrnet_gmacs uses these, and counting does not change them (eval mode, no state).
    return create_meta_model(model_name, in_chans=in_chans, num_classes=num_classes)


@dataclass(frozen=True)
class Table1Row:
    """One row of the paper's Table 1 and its FLOPS figure (GMACs at 1024² / f)."""

    method: str
    f: int
    C: int
    gamma: float
    paper_gmacs: float

    def input_size(self, image_size: int = 1024) -> int:
        return image_size // self.f


#: The 13 rows of Table 1, in the paper's order ("Ours" is the paper's domain-specific VAE,
#: MedVAE; "SD VAE" the natural-image latent-diffusion autoencoders).
TABLE1: tuple[Table1Row, ...] = (
    Table1Row("Full Size", 1, 1, 1, 607.33),
    Table1Row("Bicubic Interpolation", 4, 1, 16, 37.96),
    Table1Row("SD VAE", 4, 3, 5.3, 37.98),
    Table1Row("Ours (MedVAE)", 4, 1, 16, 37.96),
    Table1Row("Ours (MedVAE)", 4, 4, 4, 37.99),
    Table1Row("Bicubic Interpolation", 8, 1, 64, 9.49),
    Table1Row("SD VAE", 8, 4, 16, 9.50),
    Table1Row("Ours (MedVAE)", 8, 1, 64, 9.49),
    Table1Row("Ours (MedVAE)", 8, 4, 16, 9.50),
    Table1Row("Bicubic Interpolation", 16, 1, 256, 2.37),
    Table1Row("SD VAE", 16, 16, 16, 2.38),
    Table1Row("Ours (MedVAE)", 16, 1, 256, 2.37),
    Table1Row("Ours (MedVAE)", 16, 16, 16, 2.38),
)


def table1(*, rule: str = PAPER_RULE, image_size: int = 1024, model_name: str = "hrnet_w64",
           rows: Sequence[Table1Row] = TABLE1) -> list[dict[str, Any]]:
    """Measure every Table 1 row: dicts with the row's fields, ``input``, ``gmacs`` and
    ``rel_diff`` (measured / paper - 1; only meaningful at ``image_size=1024``)."""
    cache: dict[tuple[int, int], float] = {}
    out = []
    for i, row in enumerate(rows, 1):
        key = (row.f, row.C)
        if key not in cache:
            cache[key] = hrnet_gmacs(row.f, row.C, image_size, rule=rule, model_name=model_name)
        g = cache[key]
        out.append({"row": i, "method": row.method, "f": row.f, "C": row.C, "gamma": row.gamma,
                    "input": row.input_size(image_size), "gmacs": g, "paper": row.paper_gmacs,
                    "rel_diff": g / row.paper_gmacs - 1.0})
    return out


__all__ = [
    "FlopCountError", "MacCount", "PAPER_RULE", "RULES", "TABLE1", "Table1Row", "count_macs", "create_meta_model",
    "formulas", "gmacs", "hrnet_gmacs", "table1",
]
