"""What meshrtc sends: libopus directly (rtc/opus.py OpusEncoder, the adapter's BitrateOpusEncoder),
its runtime settings, in-band FEC, and ``useinbandfec=1`` in our offers and answers. About 1 s."""

from __future__ import annotations

import asyncio
import fractions

import av
import numpy as np
import numpy.typing as npt
import pytest
from aiortc import RTCConfiguration, RTCPeerConnection
from aiortc.codecs import opus as aiortc_opus

from meshrtc.rtc import aiortc_adapter as adapter
from meshrtc.rtc.opus import OpusDecoder, OpusEncodeError, OpusEncoder, has_fec

FRAME = 960
RATE = 48_000


def voice(seconds: float, seed: int = 1) -> npt.NDArray[np.int16]:
    """Stereo int16 (n, 2): a gliding 120 Hz pulse train (voiced speech's shape: what SILK, and so
    in-band FEC, is for), 0.7 s on and 0.3 s quiet each second, a little seeded noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * RATE)) / RATE
    phase = np.cumsum(2 * np.pi * (120 + 30 * np.sin(2 * np.pi * 0.5 * t)) / RATE)
    wave = sum(np.sin(k * phase) / k for k in range(1, 20)) * np.where(t % 1.0 < 0.7, 1.0, 0.05)
    mono = np.clip(6000 * wave + 300 * rng.standard_normal(t.size), -32768, 32767).astype(np.int16)
    return np.ascontiguousarray(np.stack([mono, mono], axis=1))


def frames(pcm: npt.NDArray[np.int16]) -> list[npt.NDArray[np.int16]]:
    return [pcm[i : i + FRAME] for i in range(0, len(pcm) - FRAME + 1, FRAME)]


def snr_db(reference: npt.NDArray[np.float64], decoded: npt.NDArray[np.float64]) -> float:
    """Spectral SNR over 20 ms windows: Opus keeps what is heard (magnitudes), not the waveform
    (SILK's output is not phase-exact), so a waveform SNR says little (about 4 dB here for both
    FFmpeg's and our packets)."""
    n = min(len(reference), len(decoded)) // FRAME
    window = np.hanning(FRAME)

    def magnitudes(x: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        return np.abs(np.fft.rfft(x[: n * FRAME].reshape(n, FRAME) * window, axis=1))

    ref, out = magnitudes(reference), magnitudes(decoded)
    return float(10 * np.log10(np.sum(ref**2) / max(np.sum((ref - out) ** 2), 1e-12)))


def decode_all(packets: list[bytes]) -> npt.NDArray[np.float64]:
    decoder = OpusDecoder()
    return np.concatenate([decoder.decode(p) for p in packets])[:, 0].astype(np.float64)


def aligned(
    pcm: npt.NDArray[np.int16], decoded: npt.NDArray[np.float64], delay: int
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """Input and output over the same samples: the decoder's output lags by ``delay``."""
    reference = pcm[: len(decoded) - delay, 0].astype(np.float64) / 32768.0
    return reference[FRAME:], decoded[delay:][FRAME : len(reference)]


def test_defaults_are_aiortcs_and_settings_change_between_frames() -> None:
    encoder = OpusEncoder()
    assert (encoder.bitrate, encoder.inband_fec, encoder.packet_loss_percent) == (96_000, False, 0)
    assert encoder.lookahead == 312  # 2.5 ms + 4 ms at 48 kHz: what FFmpeg's pts subtracted
    pcm = frames(voice(1.0))
    loud = [len(encoder.encode(f)) for f in pcm[:20]]
    encoder.bitrate = 24_000
    encoder.inband_fec = True
    encoder.packet_loss_percent = 10
    assert (encoder.bitrate, encoder.inband_fec, encoder.packet_loss_percent) == (24_000, True, 10)
    quiet = [len(encoder.encode(f)) for f in pcm[20:40]]
    assert np.mean(quiet) < np.mean(loud) * 0.5
    assert encoder.encoded == 40


def test_bad_input_and_settings_raise() -> None:
    encoder = OpusEncoder()
    with pytest.raises(OpusEncodeError):
        encoder.encode(np.zeros((100, 2), dtype=np.int16))  # not an Opus frame length
    with pytest.raises(OpusEncodeError):
        encoder.encode(np.zeros((FRAME, 2), dtype=np.float32))  # type: ignore[arg-type]
    with pytest.raises(OpusEncodeError):
        encoder.bitrate = 0
    with pytest.raises(OpusEncodeError):
        encoder.packet_loss_percent = 101


def test_clean_quality_is_aiortcs() -> None:
    """Today's clean path, kept: what BitrateOpusEncoder's packets (at its start, 144 kb/s to
    libopus) decode to is as close to the input as what aiortc's FFmpeg encoder's packets (96 kb/s
    to FFmpeg) decode to, same decoder for both. (The two send differently at one setting:
    aiortc_adapter.OPUS_DEFAULT_BITRATE; bench/voice_loss.py scores the clean path with PESQ.)"""
    pcm = voice(4.0)
    ours = adapter.BitrateOpusEncoder()
    theirs = aiortc_opus.OpusEncoder()
    our_packets: list[bytes] = []
    their_packets: list[bytes] = []
    for i, f in enumerate(frames(pcm)):
        frame = av.AudioFrame.from_ndarray(f.reshape(1, -1), format="s16", layout="stereo")
        frame.sample_rate, frame.pts, frame.time_base = RATE, i * FRAME, fractions.Fraction(1, RATE)
        our_packets.extend(ours.encode(frame)[0])
        their_packets.extend(theirs.encode(frame)[0])
    ref, out = aligned(pcm, decode_all(our_packets), ours.opus.lookahead)
    ours_db = snr_db(ref, out)
    ref, out = aligned(pcm, decode_all(their_packets), ours.opus.lookahead)
    theirs_db = snr_db(ref, out)
    assert ours_db > 15, ours_db
    assert ours_db > theirs_db - 1.0, (ours_db, theirs_db)


def test_fec_on_puts_the_previous_frame_in_each_voiced_packet_and_off_puts_none() -> None:
    pcm = frames(voice(2.0))
    plain = OpusEncoder(bitrate=64_000)
    assert not any(has_fec(plain.encode(f)) for f in pcm)
    fec = OpusEncoder(bitrate=64_000)
    fec.inband_fec, fec.packet_loss_percent = True, 10
    packets = [fec.encode(f) for f in pcm]
    assert sum(map(has_fec, packets)) > 0.5 * len(packets)
    fec.packet_loss_percent = 0  # FEC "on" but no loss expected: libopus sends none
    assert not any(has_fec(fec.encode(f)) for f in pcm[:20])


def test_a_lost_frame_recovered_from_the_next_packet_beats_concealment() -> None:
    pcm = voice(1.0)
    encoder = OpusEncoder(bitrate=64_000)
    encoder.inband_fec, encoder.packet_loss_percent = True, 10
    packets = [encoder.encode(f) for f in frames(pcm)]
    lost = next(i for i in range(10, len(packets) - 1) if has_fec(packets[i + 1]))
    results = {}
    for how in ("recover", "conceal"):
        decoder = OpusDecoder()
        out = []
        for i, packet in enumerate(packets):
            if i == lost:
                out.append(
                    decoder.recover(packets[i + 1]) if how == "recover" else decoder.conceal()
                )
            else:
                out.append(decoder.decode(packet))
        decoded = np.concatenate(out)[:, 0].astype(np.float64)
        start = lost * FRAME + encoder.lookahead
        reference = pcm[lost * FRAME : (lost + 1) * FRAME, 0].astype(np.float64) / 32768.0
        results[how] = snr_db(reference, decoded[start : start + FRAME])
        if how == "recover":
            assert decoder.recovered == 1
    assert results["recover"] > results["conceal"] + 3, results


def test_bitrate_opus_encoder_settings_reach_libopus_without_a_new_encoder() -> None:
    encoder = adapter.BitrateOpusEncoder()
    libopus = encoder.opus
    encoder.target_bitrate = 24_000
    encoder.target_bitrate = 1  # clamped to the floor
    assert (encoder.target_bitrate, libopus.bitrate) == (adapter.OPUS_MIN_BITRATE,) * 2
    encoder.set_fec(True, 7)
    encoder.set_fec(True, 7)  # no change: not counted
    assert (encoder.inband_fec, encoder.packet_loss_percent, encoder.fec_changes) == (True, 7, 1)
    encoder.set_fec(False, 0)
    assert (libopus.inband_fec, libopus.packet_loss_percent, encoder.fec_changes) == (False, 0, 2)
    assert encoder.opus is libopus
    assert encoder.bitrate_changes == 2


def _opus_fmtp(sdp: str) -> list[str]:
    payload_types = [
        line.split()[0].split(":")[1]
        for line in sdp.splitlines()
        if line.startswith("a=rtpmap:") and "opus/48000" in line.lower()
    ]
    return [
        line.split(" ", 1)[1]
        for line in sdp.splitlines()
        for pt in payload_types
        if line.startswith(f"a=fmtp:{pt} ")
    ]


def test_our_offers_and_answers_ask_for_inband_fec() -> None:
    adapter.install_aiortc_patches()
    preferences = {"audio": adapter.codec_preferences("audio")}

    async def main() -> tuple[str, str]:
        config = RTCConfiguration(iceServers=[])
        offerer, answerer = RTCPeerConnection(config), RTCPeerConnection(config)
        try:
            offerer.addTransceiver("audio").setCodecPreferences(preferences["audio"])
            await offerer.setLocalDescription(await offerer.createOffer())
            offer = offerer.localDescription.sdp
            answer = await adapter.answer_offer(answerer, offer, preferences)
            await adapter.apply_answer(offerer, answer.sdp)
            return offer, answer.sdp
        finally:
            await offerer.close()
            await answerer.close()

    offer, answer = asyncio.run(main())
    assert _opus_fmtp(offer) == ["useinbandfec=1"]
    assert _opus_fmtp(answer) == ["useinbandfec=1"]
