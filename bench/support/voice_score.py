"""Scoring received speech against the clip that was sent: placement, alignment, PESQ-WB, STOI.

* :func:`place` lays received 20 ms frames on the sender's RTP timeline (what a playout device
  fed at the right instants would play): a frame nobody produced stays silent, so a stack that
  skips a lost packet (plain aiortc) is heard as a gap, not as the rest of the clip shifted early.
* :func:`align` finds the clip in the received audio by FFT cross-correlation (Opus adds its
  look-ahead, 6.5 ms), within a bounded search window; :func:`aligned` cuts the matching span.
* :func:`pesq_wb` is ITU-T P.862.2 (wideband PESQ, the ``pesq`` package's C reference code) at
  16 kHz, the rate P.862.2 defines; :func:`stoi` is short-time objective intelligibility (``pystoi``).
  Both downsample from 48 kHz with libsoxr first.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import numpy.typing as npt
import soxr

RATE = 48_000
SCORE_RATE = 16_000

Audio = npt.NDArray[np.float32]


def place(frames: Iterable[tuple[int, Audio]], length: int) -> Audio:
    """Mono audio of ``length`` samples with each ``(offset, samples)`` written at its offset.

    Offsets are in samples from the stream's first RTP timestamp; what falls outside is cut.
    """
    out = np.zeros(length, dtype=np.float32)
    for offset, samples in frames:
        start, end = max(0, offset), min(length, offset + len(samples))
        if end > start:
            out[start:end] = samples[start - offset : end - offset]
    return out


def align(reference: Audio, received: Audio, *, max_lag: int = RATE // 2) -> int:
    """Lag in samples (0..``max_lag``) at which ``reference`` best matches ``received``.

    Cross-correlation through one real FFT of both padded to a common power-of-two length.
    """
    n = len(reference) + len(received)
    size = 1 << (n - 1).bit_length()
    spectrum = np.fft.rfft(received, size) * np.conj(np.fft.rfft(reference, size))
    correlation = np.fft.irfft(spectrum, size)
    window = correlation[: max_lag + 1]
    return int(np.argmax(window))


def aligned(reference: Audio, received: Audio, lag: int) -> Audio:
    """The span of ``received`` that lines up with ``reference`` at ``lag`` (zero-padded)."""
    out = np.zeros(len(reference), dtype=np.float32)
    piece = received[lag : lag + len(reference)]
    out[: len(piece)] = piece
    return out


def _at_score_rate(samples: Audio) -> npt.NDArray[np.float64]:
    return np.asarray(soxr.resample(samples, RATE, SCORE_RATE, quality="HQ"), dtype=np.float64)


def pesq_wb(reference: Audio, degraded: Audio) -> float:
    """Wideband PESQ MOS-LQO (1.04 .. 4.64) of ``degraded`` against ``reference`` (48 kHz mono)."""
    from pesq import pesq  # the C extension is only needed where scores are computed

    return float(pesq(SCORE_RATE, _at_score_rate(reference), _at_score_rate(degraded), "wb"))


def stoi(reference: Audio, degraded: Audio) -> float:
    """STOI (0 .. 1) of ``degraded`` against ``reference`` (48 kHz mono)."""
    from pystoi import stoi as _stoi

    return float(_stoi(_at_score_rate(reference), _at_score_rate(degraded), SCORE_RATE))
