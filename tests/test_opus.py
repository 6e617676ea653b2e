"""rtc/opus.py: libopus decoding, its loss concealment (PLC) and in-band FEC recovery.

The packets are made here with the binding's own encoder (what the receive side gets from a
browser or from our sender with FEC on), from a synthetic voiced signal (a gliding harmonic
series: PLC and SILK's LBRR both need periodic, speech-like input). All deterministic: libopus
decodes the same bytes to the same samples.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt
import opuslib_next
import opuslib_next.api.ctl
import opuslib_next.api.encoder
import pytest

from meshrtc.media.frame import FrameType, MediaFrame
from meshrtc.media.jitter import AudioPacket, Gap
from meshrtc.media.quality import ConnectionQuality
from meshrtc.media.sync import AlignedItem, SyncManager
from meshrtc.rtc.events import ReceivedAudio
from meshrtc.rtc.opus import MAX_FRAME_SAMPLES, OpusDecoder, has_fec
from meshrtc.rtc.peer_stats import PeerStats
from meshrtc.rtc.receiver import MediaReceiver

SR = 48_000
_SIGNAL_VOICE = 3001  # OPUS_SIGNAL_VOICE


def voiced(seconds: float, f0: float = 140.0) -> npt.NDArray[np.float32]:
    """A vowel-like signal: harmonics of a slowly gliding pitch, a formant near 700 Hz."""
    t = np.arange(int(SR * seconds)) / SR
    phase = 2 * np.pi * np.cumsum(f0 * (1 + 0.05 * np.sin(2 * np.pi * 0.7 * t))) / SR
    x = sum(
        np.sin(k * phase) * (np.exp(-(((k * f0 - 700) / 600) ** 2)) + 0.3) / k for k in range(1, 30)
    )
    x = np.asarray(x) / np.abs(x).max() * 0.5 * (0.8 + 0.2 * np.sin(2 * np.pi * 2 * t))
    return x.astype(np.float32)


def encode(
    x: npt.NDArray[np.float32],
    *,
    channels: int = 1,
    fec: bool = True,
    frame: int = 960,
    bitrate: int = 24_000,
) -> list[bytes]:
    encoder: Any = opuslib_next.Encoder(SR, channels, "voip")
    encoder.bitrate = bitrate
    encoder.inband_fec = int(fec)
    encoder.packet_loss_perc = 20 if fec else 0
    opuslib_next.api.encoder.encoder_ctl(
        encoder.encoder_state, opuslib_next.api.ctl.set_signal, _SIGNAL_VOICE
    )
    pcm = (np.clip(x, -1, 1) * 32767).astype(np.int16)
    if channels == 2:
        pcm = np.stack([pcm, pcm // 2], axis=1)
    return [
        bytes(encoder.encode(pcm[i : i + frame].tobytes(), frame))
        for i in range(0, len(pcm) - frame + 1, frame)
    ]


def rms(a: npt.NDArray[np.float32]) -> float:
    return float(np.sqrt(np.mean(np.square(a, dtype=np.float64))))


def snr_db(got: npt.NDArray[np.float32], want: npt.NDArray[np.float32]) -> float:
    noise = float(np.sum(np.square(got - want, dtype=np.float64)))
    return 10 * np.log10(float(np.sum(np.square(want, dtype=np.float64))) / max(noise, 1e-20))


@pytest.fixture(scope="module")
def fec_packets() -> list[bytes]:
    return encode(voiced(2.0))


@pytest.mark.parametrize("channels", [1, 2])
def test_decodes_to_stereo_float32_in_range(channels: int) -> None:
    packets = encode(voiced(0.4), channels=channels, fec=False)
    decoder = OpusDecoder()
    out = [decoder.decode(p) for p in packets]
    assert all(o.shape == (960, 2) and o.dtype == np.float32 for o in out)
    pcm = np.concatenate(out)
    assert np.abs(pcm).max() < 1.0
    assert rms(pcm[4800:]) > 0.05  # not silence once past the codec's start-up
    if channels == 1:
        np.testing.assert_array_equal(pcm[:, 0], pcm[:, 1])
    else:
        assert rms(pcm[4800:, 1]) < 0.75 * rms(pcm[4800:, 0])  # the right channel is half as loud
    assert (decoder.decoded, decoder.concealed, decoder.errors) == (len(packets), 0, 0)


@pytest.mark.parametrize("frame", [480, 1920, 2880])
def test_other_packet_lengths_decode_whole_and_conceal_as_long(frame: int) -> None:
    packets = encode(voiced(0.3), frame=frame, fec=False)
    decoder = OpusDecoder()
    assert all(decoder.decode(p).shape == (frame, 2) for p in packets)
    assert decoder.frame_samples == frame
    assert decoder.conceal().shape == (frame, 2)  # a lost packet is as long as its neighbours
    assert decoder.conceal(960).shape == (960, 2)


def test_plc_continues_voice_then_fades(fec_packets: list[bytes]) -> None:
    decoder = OpusDecoder()
    last = [decoder.decode(p) for p in fec_packets[:50]][-1]
    concealed = [decoder.conceal() for _ in range(15)]
    # The old fade repeated the last frame; libopus continues the voice (not silence, not a copy)
    # and decays over a long loss.
    assert rms(concealed[0]) > 0.5 * rms(last)
    assert not np.array_equal(concealed[0], last)
    assert max(rms(c) for c in concealed[-5:]) < 0.6 * rms(concealed[0])
    assert decoder.concealed == 15


def test_has_fec_follows_the_encoder_setting(fec_packets: list[bytes]) -> None:
    plain = encode(voiced(2.0), fec=False)
    assert not any(has_fec(p) for p in plain)
    assert not has_fec(fec_packets[0])  # nothing before the first packet to protect
    assert sum(has_fec(p) for p in fec_packets) > len(fec_packets) // 2
    assert not has_fec(b"")
    assert not has_fec(b"\xff\xff\xff")
    assert OpusDecoder.has_fec(fec_packets[1]) == has_fec(fec_packets[1])


def test_fec_recovers_a_lost_frame_far_better_than_plc(fec_packets: list[bytes]) -> None:
    reference = OpusDecoder()
    want = [reference.decode(p) for p in fec_packets]
    lost = [k for k in range(10, len(fec_packets) - 1, 7) if has_fec(fec_packets[k + 1])]
    assert len(lost) >= 6
    gains = []
    for k in lost:
        plc, fec = OpusDecoder(), OpusDecoder()
        for p in fec_packets[:k]:
            plc.decode(p)
            fec.decode(p)
        concealed = plc.conceal()
        recovered = fec.recover(fec_packets[k + 1])
        assert (fec.recovered, fec.concealed) == (1, 0)
        assert snr_db(recovered, want[k]) > 10.0, k
        gains.append(snr_db(recovered, want[k]) - snr_db(concealed, want[k]))
        # The next packet was not consumed: it decodes normally afterwards, close to the reference.
        assert snr_db(fec.decode(fec_packets[k + 1]), want[k + 1]) > 10.0
    assert min(gains) > 3.0, gains
    assert float(np.mean(gains)) > 6.0, gains


def test_recover_without_fec_data_is_counted_as_concealment() -> None:
    packets = encode(voiced(0.5), fec=False)
    decoder = OpusDecoder()
    for p in packets[:10]:
        decoder.decode(p)
    assert decoder.recover(packets[11]).shape == (960, 2)
    assert (decoder.recovered, decoder.concealed) == (0, 1)


def test_corrupt_input_is_concealed_and_counted_never_raised(fec_packets: list[bytes]) -> None:
    decoder = OpusDecoder()
    for p in fec_packets[:20]:
        decoder.decode(p)
    rng = np.random.default_rng(17)
    junk = [b"", b"\xff\xff\xff", *(rng.bytes(int(n)) for n in rng.integers(1, 400, 60))]
    for payload in junk:
        for pcm in (decoder.decode(payload), decoder.recover(payload)):
            assert pcm.dtype == np.float32
            assert pcm.ndim == 2
            assert pcm.shape[1] == 2
            assert 0 < len(pcm) <= MAX_FRAME_SAMPLES
            assert np.isfinite(pcm).all()
            assert np.abs(pcm).max() <= 1.0
    assert decoder.errors >= 2  # random bytes are often valid Opus; these two never are
    assert decoder.decoded + decoder.errors == 20 + len(junk)
    # And the stream goes on.
    assert decoder.decode(fec_packets[21]).shape == (960, 2)


class _Tap:
    """The receiver asks its tap for the negotiated codec of the first audio packet."""

    class _Codec:
        mimeType = "audio/opus"  # noqa: N815 (aiortc's attribute name)

    def codec(self, frame: MediaFrame) -> Any:
        return self._Codec()


def test_receiver_recovers_the_last_frame_of_a_gap_and_counts_it(fec_packets: list[bytes]) -> None:
    """A Gap of two with ``recovery``: PLC for the first, FEC from the recovery packet for the last;
    then the same again with a recovery packet that carries no FEC data (concealed)."""
    tap: Any = _Tap()
    stats = PeerStats()
    got: list[Any] = []
    receiver = MediaReceiver(
        "bob",
        tap=tap,
        bridge=tap,
        sync=SyncManager("bob"),
        quality=ConnectionQuality("bob"),
        stats=stats,
        sender_reports={},
        deliver=got.append,
        close_timeout=1.0,
        started_at=0.0,
    )

    def frame(n: int, payload: bytes) -> MediaFrame:
        return MediaFrame(FrameType.AUDIO, 960 * n, n, payload, 0.0, False, 1, 111)

    def at(n: int) -> float:
        return 100.0 + 0.02 * n

    def packet(n: int) -> AlignedItem:
        item = AudioPacket(frame(n, fec_packets[n]), at(n))
        return AlignedItem(FrameType.AUDIO, item, None, at(n), at(n))

    def gap(n: int, count: int, recovery: MediaFrame | None) -> AlignedItem:
        item = Gap(FrameType.AUDIO, n, count, 960 * n, at(n), recovery)
        return AlignedItem(FrameType.AUDIO, item, None, at(n), at(n))

    k = next(k for k in range(20, 60) if has_fec(fec_packets[k + 2]))
    for n in range(k):
        receiver.play(packet(n))
    receiver.play(gap(k, 2, frame(k + 2, fec_packets[k + 2])))
    receiver.play(packet(k + 2))
    assert (stats.recovered_frames, stats.concealed_frames) == (1, 1)
    decoder = receiver.audio_decoder
    assert decoder is not None
    assert (decoder.recovered, decoder.concealed, decoder.decoded) == (1, 1, k + 1)
    plain = encode(voiced(0.1), fec=False)[3]
    receiver.play(gap(k + 3, 1, frame(k + 4, plain)))
    assert (stats.recovered_frames, stats.concealed_frames) == (1, 2)
    assert stats.audio_frames == k + 4
    assert receiver.codecs == {FrameType.AUDIO: "audio/opus"}
    audio = [x for x in got if isinstance(x, ReceivedAudio)]
    assert audio
    assert all(x.samples.shape == (960, 2) for x in audio)


def test_a_lost_packet_is_recovered_through_the_jitter_buffer(fec_packets: list[bytes]) -> None:
    """End to end without a network: packets into the receiver's SyncManager as they would arrive
    (20 ms apart, one never), the receiver playing what it releases. The packet after the lost one
    is here at the lost one's playout time, so the jitter buffer offers it (``Gap.recovery``) and
    the receiver rebuilds the lost frame from its FEC data; a loss followed by a packet without FEC
    data is concealed."""
    tap: Any = _Tap()
    stats = PeerStats()
    sync = SyncManager("bob")
    receiver = MediaReceiver(
        "bob",
        tap=tap,
        bridge=tap,
        sync=sync,
        quality=ConnectionQuality("bob"),
        stats=stats,
        sender_reports={},
        deliver=lambda _item: None,
        close_timeout=1.0,
        started_at=0.0,
    )
    with_fec = next(k for k in range(20, 70) if has_fec(fec_packets[k + 1]))
    without = next(k for k in range(with_fec + 5, 95) if not has_fec(fec_packets[k + 1]))
    count = without + 5
    for n in range(count):
        now = 10.0 + 0.02 * n
        if n not in (with_fec, without):
            frame = MediaFrame(FrameType.AUDIO, 960 * n, n, fec_packets[n], now, False, 7, 111)
            sync.insert(frame, now)
        for item in sync.pop_next_aligned(now):
            receiver.play(item)
    for step in range(100):  # drain what is still held (the jitter target), bounded
        for item in sync.pop_next_aligned(10.0 + 0.02 * (count + step)):
            receiver.play(item)
    buffer = sync.audio_jitter_buffer
    assert buffer.packet_loss_count == 2
    assert buffer.recovery_offered_count == 2
    assert (stats.recovered_frames, stats.concealed_frames) == (1, 1)
    assert stats.audio_frames == count
