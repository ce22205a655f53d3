"""Pieces of feature front ends shared by several models.

Everything here is batched over the first dimension and differentiable with respect to the
waveform, so adversarial attacks on the waveform see the whole pipeline.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from audiobench.resample import Resampler


class WaveformResampler(Resampler):
    """Resample (batch, samples) from ``orig_hz`` to ``new_hz``; identity when they are equal.

    The resampler sits inside each model wrapper (not in the data layer) so that every model sees
    the same perturbed audio at the dataset's rate and an attack's gradient flows through the
    model's own resampling. It is :class:`audiobench.resample.Resampler`, the one resampler of
    audiobench (``data pack`` and ``predict`` decode audio through it too): torchaudio's windowed
    sinc (Hann window, 6 zero crossings, roll-off 0.99; the reference scores in
    ../shared/README.md use it), bit-identical to ``torchaudio.transforms.Resample`` for the common
    rates, and a polyphase evaluation of the same filter with bounded memory when the reduced
    ratio is large (44101 -> 32000 Hz). Its tables are non-persistent buffers, so checkpoints keep
    their reference layout whatever the dataset's rate.
    """


# ------------------------------------------------------------------------------------------------
# STFT power spectrum with a hand-written backward
# ------------------------------------------------------------------------------------------------
def _preemphasis(x: torch.Tensor, coef: float) -> torch.Tensor:
    """y[n] = x[n + 1] - coef * x[n]: one sample shorter (upstream EfficientAT's 2-tap convolution)."""
    return x[:, 1:] - coef * x[:, :-1]


def _stft_frames_major(x: torch.Tensor, n_fft: int, hop: int, window: torch.Tensor, win_length: int) -> torch.Tensor:
    """``torch.stft`` (centred, reflect padding, one-sided) as (batch, frames, bins), contiguous.

    torch.stft computes (batch, frames, bins) and returns a transposed view; transposing back is free.
    """
    spec = torch.stft(x, n_fft, hop_length=hop, win_length=win_length, window=window, center=True,
                      pad_mode="reflect", normalized=False, onesided=True, return_complex=True)
    return spec.transpose(1, 2)


class _StftPower(torch.autograd.Function):
    """|STFT|^2 of an optionally pre-emphasised (batch, samples) signal, as (batch, frames, bins).

    The forward is ``torch.stft`` itself (values bit-identical to the autograd path of
    :func:`stft_power`). The backward is written out because autograd's chain through
    ``torch.stft`` is slow for what it computes: it zero-fills a full two-sided complex spectrum,
    runs a complex-to-complex inverse FFT, multiplies the whole n_fft frame by the window and
    scatters the overlapping frames back with ``index_add_``. For P_k = |X_k|^2 with
    X = rfft(w * frame), dL/dframe_n = 2 Re sum_k G_k X_k e^{+2 pi i k n / N}: one unnormalised
    real inverse FFT of G * X (DC and Nyquist bins doubled, as the one-sided spectrum holds them
    once), then the window (only its ``win_length`` non-zero samples), then overlap-add as
    ceil(win_length / hop) shifted slice additions, then the reflect padding and the
    pre-emphasis folded back. Same maths in fewer, contiguous passes: the front end's forward +
    backward takes under half of autograd's time on a CPU (benchmarks/RESULTS.md).
    """

    @staticmethod
    def forward(ctx, waveform, window, n_fft, hop, win_length, preemphasis):
        x = waveform if preemphasis is None else _preemphasis(waveform, preemphasis)
        spec = _stft_frames_major(x, n_fft, hop, window, win_length)
        ctx.save_for_backward(spec, window)
        ctx.geometry = (x.shape[-1], n_fft, hop, win_length, preemphasis)
        return spec.real.square() + spec.imag.square()

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_power):
        spec, window = ctx.saved_tensors
        n, n_fft, hop, win_length, preemphasis = ctx.geometry
        batch, frames, _ = spec.shape
        # G * X; G as a complex tensor (an exact conversion: im = 0) makes this the fastest
        # contiguous complex multiply (a real G broadcast over (re, im) pairs is ~2x slower)
        y = spec * grad_power.to(spec.dtype)
        y[:, :, 0] *= 2
        y[:, :, -1] *= 2
        grad_frames = torch.fft.irfft(y, n=n_fft, dim=-1, norm="forward")  # (batch, frames, n_fft)
        # torch.stft centres a shorter window in the frame: only its support has a gradient
        offset = (n_fft - win_length) // 2
        windowed = grad_frames[..., offset:offset + win_length] * window
        # overlap-add: cut the support into hop-long chunks; chunk j of frame t lands on chunk
        # t + j of the padded signal (counted from ``offset``); the last chunk may be shorter
        chunks = -(-win_length // hop)
        pad = n_fft // 2
        span = (frames + chunks - 1) * hop
        grad_padded = windowed.new_zeros(batch, max(n + 2 * pad, offset + span))
        overlap = grad_padded[:, offset:offset + span].view(batch, frames + chunks - 1, hop)
        for j in range(chunks):
            width = min(hop, win_length - j * hop)
            overlap[:, j:j + frames, :width] += windowed[:, :, j * hop:j * hop + width]
        # reflect padding: padded[i] = x[pad - i] for i < pad; padded[pad + n + j] = x[n - 2 - j]
        grad_x = grad_padded[:, pad:pad + n]  # a view: the folds below write into grad_padded
        grad_x[:, 1:pad + 1] += grad_padded[:, :pad].flip(-1)
        grad_x[:, n - 1 - pad:n - 1] += grad_padded[:, pad + n:2 * pad + n].flip(-1)
        if preemphasis is None:
            return grad_x, None, None, None, None, None
        grad_w = grad_x.new_empty(batch, n + 1)
        grad_w[:, n:] = grad_x[:, n - 1:]
        grad_w[:, :1] = grad_x[:, :1] * -preemphasis
        torch.add(grad_x[:, :-1], grad_x[:, 1:], alpha=-preemphasis, out=grad_w[:, 1:n])
        return grad_w, None, None, None, None, None


def stft_power(x: torch.Tensor, n_fft: int, hop: int, window: torch.Tensor, win_length: int,
               preemphasis: Optional[float] = None, fused_backward: bool = True) -> torch.Tensor:
    """|torch.stft(x')|^2 as (batch, frames, n_fft // 2 + 1), centred, reflect padding; x' is x,
    or x pre-emphasised (``x'[n] = x[n + 1] - preemphasis * x[n]``, one sample shorter).

    ``fused_backward`` (default) uses :class:`_StftPower`'s hand-written backward; ``False`` lets
    autograd differentiate ``torch.stft`` (the reference; the benchmark's baseline loops use it).
    The forward values are the same either way; the gradients agree to float rounding
    (tests/test_frontends.py). Frames-major output so a mel projection is one GEMM whose gradient
    comes back contiguous.
    """
    if fused_backward and torch.is_grad_enabled() and x.requires_grad:
        return _StftPower.apply(x, window, n_fft, hop, win_length, preemphasis)
    if preemphasis is not None:
        x = _preemphasis(x, preemphasis)
    spec = _stft_frames_major(x, n_fft, hop, window, win_length)
    return spec.real.square() + spec.imag.square()


def set_fused_backward(model: nn.Module, enabled: bool) -> int:
    """Switch every front end in ``model`` that has a ``fused_backward`` flag; returns how many."""
    count = 0
    for module in model.modules():
        if hasattr(module, "fused_backward"):
            module.fused_backward = bool(enabled)
            count += 1
    return count
