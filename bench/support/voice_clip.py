"""The speech clip of bench/voice_loss.py: espeak-ng (Debian) speaking fixed text, at 48 kHz.

A synthetic voice, so the clip is the same on every machine with the same espeak-ng (1.51 on
Debian 12) and needs no recording shipped in the repository. Four Harvard sentences (IEEE 1969
phonetically balanced lists, the material of ITU-T P.862's own test sets) at 160 words/min are
about 10 s. espeak-ng writes 22.05 kHz; libsoxr (a meshrtc dependency) resamples to Opus's 48 kHz.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import wave
from pathlib import Path

import numpy as np
import numpy.typing as npt
import soxr

RATE = 48_000
TEXT = (
    "The birch canoe slid on the smooth planks. Glue the sheet to the dark blue background. "
    "It is easy to tell the depth of a well. These days a chicken leg is a rare dish."
)
#: Peak level of the clip (-6 dBFS): loud enough for PESQ's level alignment, no clipping in Opus.
PEAK = 0.5


class SpeechUnavailableError(RuntimeError):
    """espeak-ng is not installed (Debian package ``espeak-ng``; .ci/run installs it)."""


def espeak_available() -> bool:
    return shutil.which("espeak-ng") is not None


def speak(text: str = TEXT, *, words_per_minute: int = 160) -> npt.NDArray[np.float32]:
    """``text`` spoken by espeak-ng's default en-us voice: mono float32 at 48 kHz, peak :data:`PEAK`."""
    exe = shutil.which("espeak-ng")
    if exe is None:
        raise SpeechUnavailableError("espeak-ng is not installed (apt-get install espeak-ng)")
    with tempfile.TemporaryDirectory(prefix="meshrtc-voice-") as tmp:
        path = Path(tmp) / "clip.wav"
        subprocess.run(
            [exe, "-v", "en-us", "-s", str(words_per_minute), "-w", str(path), text],
            check=True,
            capture_output=True,
            timeout=30,
        )
        with wave.open(str(path), "rb") as wav:
            if wav.getsampwidth() != 2 or wav.getnchannels() != 1:
                raise SpeechUnavailableError("espeak-ng wrote something other than mono 16-bit")
            rate = wav.getframerate()
            pcm = np.frombuffer(wav.readframes(wav.getnframes()), dtype="<i2")
    samples = pcm.astype(np.float32) / 32768.0
    resampled = np.asarray(soxr.resample(samples, rate, RATE, quality="HQ"), dtype=np.float32)
    peak = float(np.abs(resampled).max())
    return (resampled * (PEAK / peak)).astype(np.float32) if peak > 0 else resampled
