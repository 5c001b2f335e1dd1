"""Memory-lean inference forward for the diffusers ``Encoder`` / ``Decoder``.

With SDPA attention the autoencoder's peak memory is its full-resolution activations:
at 2048² one 128-channel fp32 activation is 2.1 GB. diffusers' forward holds up to five
of them at once:

* the caller keeps a reference to each block's input for the whole call (``sample =
  down_block(sample)`` pins the old ``sample``);
* ResNet blocks allocate fresh tensors for SiLU, for ``input + hidden`` and for
  ``/ output_scale_factor``.

This module runs the same modules in the same order with the same kernels. It passes
activations in a one-element list ("box") so that no caller pins them, and it runs SiLU,
the residual add and the scale in place, and it keeps activations channels_last (see
:func:`_call`). The in-place steps are bit-identical to diffusers' (x + y == y + x
exactly in IEEE arithmetic, x / 1.0 == x); channels_last convolutions may round
differently from NCHW ones, so the codec fingerprint records the memory format.
``tests/test_codecs.py`` checks that the lean forward with ``channels_last=False``
equals diffusers' forward bit for bit, and is within float rounding with it on. Only inference is supported: callers must
hold ``torch.inference_mode()`` or ``no_grad``.

:func:`supports_lean` checks the module structure this code knows (diffusers' KL
``Encoder``/``Decoder`` with DownEncoderBlock2D / AttnDownEncoderBlock2D / UpDecoderBlock2D /
AttnUpDecoderBlock2D and a UNetMidBlock2D). Anything else falls back to diffusers' forward.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["decoder_forward", "encoder_forward", "supports_lean"]

Box = list  # a one-element list holding the only reference to an activation


def _is_plain_resnet(block: Any) -> bool:
    from diffusers.models.resnet import ResnetBlock2D

    return (
        type(block) is ResnetBlock2D
        and block.upsample is None
        and block.downsample is None
        and block.time_emb_proj is None
        and isinstance(block.nonlinearity, nn.SiLU)
        and not block.training
    )


def _resnet(block: Any, box: Box) -> torch.Tensor:
    x = box.pop()
    h = block.norm1(x)
    F.silu(h, inplace=True)
    h = block.conv1(h)
    h = block.norm2(h)
    F.silu(h, inplace=True)
    h = block.conv2(h)  # dropout is the identity in eval mode
    if block.conv_shortcut is not None:
        x = block.conv_shortcut(x)
    if torch.promote_types(h.dtype, x.dtype) == h.dtype:
        h.add_(x)  # diffusers: input + hidden; addition commutes exactly
    else:  # under autocast the two can differ in dtype; keep diffusers' type promotion
        h = x + h
    del x
    if block.output_scale_factor != 1.0:
        h.div_(block.output_scale_factor)
    return h


def _call(module: Any, box: Box, cl: bool) -> torch.Tensor:
    """Run a non-ResNet module (attention, down/upsampler, conv) on the boxed tensor.

    The output is made channels_last (a no-op when it already is, e.g. after a conv on a
    channels_last input). oneDNN convolves NHWC activations directly, while NCHW ones are
    reordered into a temporary copy: that copy is one extra full-resolution activation at
    the peak. ResNet blocks keep the layout (GroupNorm, in-place SiLU/add preserve it).
    """
    x = box.pop()
    y = module(x)
    del x
    return y.contiguous(memory_format=torch.channels_last) if cl else y


def _mid(mid: Any, box: Box, cl: bool) -> torch.Tensor:
    # Pattern used throughout: ``box = [f(box)]``. f pops the only reference out of the
    # list, so nothing in this frame pins its input while f runs (``h = f(h)`` would).
    box = [_resnet(mid.resnets[0], box)]
    for attn, resnet in zip(mid.attentions, mid.resnets[1:]):
        if attn is not None:
            box = [_call(attn, box, cl)]
        box = [_resnet(resnet, box)]
    return box.pop()


def _block(block: Any, box: Box, cl: bool) -> torch.Tensor:
    attentions = getattr(block, "attentions", None)
    for i, resnet in enumerate(block.resnets):
        box = [_resnet(resnet, box)]
        if attentions is not None:
            box = [_call(attentions[i], box, cl)]
    for sampler in getattr(block, "downsamplers", None) or []:
        box = [_call(sampler, box, cl)]
    for sampler in getattr(block, "upsamplers", None) or []:
        box = [_call(sampler, box, cl)]
    return box.pop()


def supports_lean(model: Any) -> bool:
    """True if ``model.encoder`` and ``model.decoder`` have the structure this module runs."""
    from diffusers.models.autoencoders.vae import Decoder, Encoder
    from diffusers.models.unets.unet_2d_blocks import (
        AttnDownEncoderBlock2D,
        AttnUpDecoderBlock2D,
        DownEncoderBlock2D,
        UNetMidBlock2D,
        UpDecoderBlock2D,
    )

    enc, dec = getattr(model, "encoder", None), getattr(model, "decoder", None)
    if type(enc) is not Encoder or type(dec) is not Decoder:
        return False
    if getattr(dec, "conv_norm_out", None) is None or not isinstance(dec.conv_norm_out, nn.GroupNorm):
        return False  # spatial-norm decoders take latent_embeds
    blocks_ok = all(type(b) in (DownEncoderBlock2D, AttnDownEncoderBlock2D) for b in enc.down_blocks) and all(
        type(b) in (UpDecoderBlock2D, AttnUpDecoderBlock2D) for b in dec.up_blocks
    )
    mids_ok = all(type(m.mid_block) is UNetMidBlock2D for m in (enc, dec))
    resnets = [m for m in model.modules() if type(m).__name__ == "ResnetBlock2D"]
    return blocks_ok and mids_ok and all(_is_plain_resnet(r) for r in resnets)


def encoder_forward(encoder: Any, box: Box, *, channels_last: bool = True) -> torch.Tensor:
    """``encoder(x)`` for the boxed ``x`` (diffusers ``Encoder.forward``). With
    ``channels_last=False`` the result is bit-identical to diffusers' forward."""
    cl = channels_last
    box = [_call(encoder.conv_in, box, cl)]
    for block in encoder.down_blocks:
        box = [_block(block, box, cl)]
    h = _mid(encoder.mid_block, box, cl)
    h = encoder.conv_norm_out(h)
    h = encoder.conv_act(h)
    return encoder.conv_out(h)


def decoder_forward(decoder: Any, box: Box, *, channels_last: bool = True) -> torch.Tensor:
    """``decoder(z)`` for the boxed ``z`` (diffusers ``Decoder.forward``). With
    ``channels_last=False`` the result is bit-identical to diffusers' forward."""
    cl = channels_last
    box = [_call(decoder.conv_in, box, cl)]
    box = [_mid(decoder.mid_block, box, cl)]
    for block in decoder.up_blocks:
        box = [_block(block, box, cl)]
    h = box.pop()
    h = decoder.conv_norm_out(h)
    h = decoder.conv_act(h)
    return decoder.conv_out(h)
