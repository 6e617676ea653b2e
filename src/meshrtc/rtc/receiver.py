"""MediaReceiver: one link's receive path, from the tap's events to the peer's ``received``.

One per link (a rebuilt RTCPeerConnection gets a fresh one, so decoders, the drift stage and the
keyframe state start afresh). Its task feeds the tap's packets and Sender Reports into the peer's
:class:`~meshrtc.media.sync.SyncManager`, sleeps until its ``next_due()`` (or the next packet),
decodes what is due and hands it to the ``deliver`` callback. Audio (cheap Opus) is decoded in that
task and goes through the drift compensation stage (media/audio_stage.py); video goes to the link's
own decode thread (a :class:`~meshrtc.rtc.decode_worker.DecodeWorker` named
``meshrtc-video-<peer>``, started by the first frame, joined by :meth:`MediaReceiver.aclose`), so a
slow decode never blocks trio, and a second task delivers its pictures in order.

Keyframe recovery is decided by one :class:`~meshrtc.media.keyframe.KeyframePolicy`: the jitter
buffer's ``KeyframeRequest`` items, decode failures and backlog drops go in, and this class only
carries out "send a PLI now" (through the bridge, on the tap). docs/peers.md, "Receive path".

Everything it needs comes in through the constructor (tap, bridge, sync manager, quality, counters,
the deliver callback); it never reaches back into the PeerConnection.
"""

from __future__ import annotations

import functools
import logging
import math
import time
from collections.abc import Callable

import attrs
import av
import numpy as np
import numpy.typing as npt
import trio

from meshrtc.errors import ConfigError
from meshrtc.media.audio_stage import SAMPLE_RATE as STAGE_SAMPLE_RATE
from meshrtc.media.audio_stage import DriftCompensationStage, applied_correction
from meshrtc.media.frame import FrameType, MediaFrame
from meshrtc.media.jitter import AudioPacket, Gap, InsertResult, KeyframeRequest, VideoFrame
from meshrtc.media.keyframe import KeyframePolicy, is_keyframe_for
from meshrtc.media.nack import NackConfig, NackPolicy
from meshrtc.media.quality import ConnectionQuality
from meshrtc.media.rtcp import NTP_EPOCH_OFFSET, ReceptionReport, SenderReport
from meshrtc.media.sync import AlignedItem, SyncManager
from meshrtc.rtc.aiortc_adapter import (
    PeerTap,
    RembReport,
    RtcpActivity,
    TapEvent,
    VideoDecoder,
)
from meshrtc.rtc.bridge import Bridge
from meshrtc.rtc.decode_worker import DecodeWorker
from meshrtc.rtc.events import ReceivedAudio, ReceivedData, ReceivedMedia, ReceivedVideo
from meshrtc.rtc.opus import OpusDecoder
from meshrtc.rtc.peer_stats import PeerStats
from meshrtc.rtc.tracks import AUDIO_FRAME_SAMPLES

__all__ = ["ChannelMessage", "MediaEvent", "MediaReceiver", "buffers_jitter_ms"]

log = logging.getLogger(__name__)

#: The one audio codec meshrtc negotiates (aiortc_adapter.codec_preferences) and decodes.
_OPUS = "audio/opus"
#: A decoded picture waits at most this long for the audio presented with it to leave the audio
#: stage (which holds audio 5-25 ms; more only if the trio thread is stalled).
_VIDEO_WAITS_FOR_AUDIO = 0.1
#: Audio presented within this long before a picture counts as flowing (worth waiting for).
_AUDIO_FLOWING = 0.1
#: Video frames a link's decode thread may have in hand (queued, decoding, or decoded and not yet
#: delivered). Beyond it the decoder is not keeping up: a frame is dropped and a keyframe asked
#: for, instead of every later picture arriving later (at 30 fps, 4 frames is ~130 ms).
_VIDEO_BACKLOG = 4


@attrs.frozen
class ChannelMessage:
    """A data channel message, with when it arrived (monotonic seconds)."""

    data: bytes | str
    at: float


#: What the link's media channel carries from the asyncio thread.
MediaEvent = TapEvent | ChannelMessage


@attrs.frozen(eq=False)
class _VideoJob:
    """One video frame for the link's decode thread, with what its delivery needs afterwards."""

    frame: VideoFrame
    sender_time: float | None
    presentation_time: float
    #: A keyframe, or any frame of a codec whose keyframes cannot be recognised (its picture can
    #: answer a keyframe request).
    keyframe: bool
    #: Its number in the keyframe policy's count of submitted frames.
    number: int


@attrs.frozen(eq=False)
class _Decoded:
    pictures: list[av.VideoFrame]
    #: Decode failures during this frame.
    errors: int


def _decode_on_worker(decoder: VideoDecoder, job: _VideoJob) -> _Decoded:
    """On the link's decode thread: the only place ``decoder`` is used once it has a thread."""
    errors = decoder.errors
    pictures = decoder.decode(job.frame.packets)
    return _Decoded(pictures, decoder.errors - errors)


def buffers_jitter_ms(sync: SyncManager) -> float:
    """The worst RFC 3550 jitter of a peer's two jitter buffers: the one estimate per packet,
    which the quality figures report (media/quality.py)."""
    return max(sync.audio_jitter_buffer.jitter_ms, sync.video_jitter_buffer.jitter_ms)


def _ntp_now_at(monotonic_time: float) -> int:
    """Our 64-bit NTP wall clock at ``monotonic_time`` (what aiortc stamps its SRs with)."""
    wall = time.time() - (time.monotonic() - monotonic_time)
    return int((wall + NTP_EPOCH_OFFSET) * 4294967296.0)


class MediaReceiver:
    """One link's receive path: ingest → SyncManager → decode → keyframe policy.

    ``sender_reports`` is the peer's "latest SR per kind" (updated in place); ``deliver`` takes every
    received item in time order; ``started_at`` starts :attr:`last_activity` (the peer's media
    timeout reads it).
    """

    def __init__(
        self,
        peer_id: str,
        *,
        tap: PeerTap,
        bridge: Bridge,
        sync: SyncManager,
        quality: ConnectionQuality,
        stats: PeerStats,
        sender_reports: dict[FrameType, SenderReport],
        deliver: Callable[[ReceivedMedia], None],
        close_timeout: float,
        started_at: float,
        accept_media: bool = True,
        nack: NackConfig | None = None,
    ) -> None:
        self.peer_id = peer_id
        #: False when the remote may not publish: its RTP is counted and dropped on arrival, so a
        #: client that sends anyway costs no decoding and reaches nobody.
        self.accept_media = accept_media
        self.tap = tap
        self.bridge = bridge
        self.sync = sync
        self.quality = quality
        self.stats = stats
        self.sender_reports = sender_reports
        self._deliver = deliver
        self._close_timeout = close_timeout
        #: Newest arrival of anything from the remote (RTP, RTCP, data), monotonic seconds.
        self.last_activity = started_at
        #: libopus, built by the first audio packet (rtc/opus.py: PLC and in-band FEC recovery).
        self.audio_decoder: OpusDecoder | None = None
        #: The negotiated audio codec (MIME type) once the first audio packet came.
        self.audio_codec: str | None = None
        #: Built on the trio thread, then used only by ``video_worker``'s thread.
        self.video_decoder: VideoDecoder | None = None
        self.video_worker: DecodeWorker[_VideoJob, _Decoded] | None = None
        #: Every keyframe recovery decision of this link's video.
        self.keyframes = KeyframePolicy()
        #: False while nobody needs this member's pictures (the transport's load shedding at
        #: ``VIDEO_OFF``): :meth:`set_decode_video`.
        self.decode_video = True
        self.ssrc_kinds: dict[int, FrameType] = {}
        self.keyframe_detectors: dict[int, Callable[[MediaFrame], bool]] = {}
        self.last_presented = -math.inf
        #: Decoded audio → 960-sample frames 20 ms apart on our clock (drift compensated).
        self.audio_stage = DriftCompensationStage()
        #: Presentation time of the newest decoded audio block handed to ``audio_stage``.
        self.audio_input_time = -math.inf
        #: Set (and replaced) each time ``audio_stage`` delivers frames: video waiting for its audio.
        self._audio_progress = trio.Event()
        self._nursery: trio.Nursery | None = None
        #: Audio NACK (media/nack.py): which lost audio packets to ask the sender for again while
        #: a resend can still play; None when turned off (PeerOptions.audio_nack).
        self.nack = None if nack is None else NackPolicy(nack)
        #: The audio SSRC the NACK policy follows, and whether its codec negotiated NACK.
        self._nack_ssrc: int | None = None
        self._nack_negotiated = False

    @property
    def codecs(self) -> dict[FrameType, str]:
        """The codec (MIME type) of each kind this link has started decoding."""
        out: dict[FrameType, str] = {}
        if self.audio_decoder is not None and self.audio_codec is not None:
            out[FrameType.AUDIO] = self.audio_codec
        if self.video_decoder is not None:
            out[FrameType.VIDEO] = self.video_decoder.codec.mimeType
        return out

    async def run(self, media: trio.MemoryReceiveChannel[MediaEvent]) -> None:
        """Until ``media`` ends; the PLI and video delivery tasks live in this call's nursery."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            await self._media_loop(media)

    async def aclose(self) -> None:
        """Join the decode thread (shielded, bounded by ``close_timeout``)."""
        if self.video_worker is not None:
            await self.video_worker.aclose()

    def is_keyframe(self, frame: MediaFrame) -> bool:
        """The video jitter buffer's keyframe test, for whatever codec this link negotiated."""
        detector = self.keyframe_detectors.get(frame.payload_type)
        if detector is None:
            codec = self.tap.codec(frame)
            if codec is None:
                return False
            try:
                detector = is_keyframe_for(codec.name)
            except ConfigError:
                log.warning("peer %s: no keyframe detector for %s", self.peer_id, codec.name)
                return False
            self.keyframe_detectors[frame.payload_type] = detector
        return detector(frame)

    async def _media_loop(self, media: trio.MemoryReceiveChannel[MediaEvent]) -> None:
        """Packets in as they come, media out when the SyncManager says it is due."""
        sync = self.sync
        while True:
            now = time.monotonic()
            due = sync.next_due()
            wait = math.inf if due is None else due - now
            if wait > 0:
                with trio.move_on_after(wait):
                    try:
                        event = await media.receive()
                    except (trio.EndOfChannel, trio.ClosedResourceError):
                        return
                    arrived = time.monotonic()
                    self.ingest(event, arrived)
                    while True:
                        try:
                            event = media.receive_nowait()
                        except trio.WouldBlock:
                            break
                        except (trio.EndOfChannel, trio.ClosedResourceError):
                            return
                        self.ingest(event, arrived)
            now = time.monotonic()
            items = sync.pop_next_aligned(now)
            for item in items:
                self.play(item)
            if self.nack is not None and self._nack_negotiated:
                self._poll_nack(now)
            keyframes = self.keyframes
            # The buffer asked once and still drops every frame for a keyframe, yet the policy
            # was satisfied: the SyncManager hands a KeyframeRequest out at once but holds frames
            # for their presentation time, so a keyframe the buffer released before the loss
            # reached the decoder after the request (five-peer mesh: video frozen for 30 s).
            rearm = keyframes.wanted_since is None and sync.video_jitter_buffer.keyframe_outstanding
            if self.decode_video and ((rearm and keyframes.need(now)) or keyframes.poll(now)):
                self._send_pli_soon()
            if not items and wait <= 0:
                await trio.sleep(0.001)  # due now but nothing released: do not spin

    def ingest(self, event: MediaEvent, arrived: float) -> None:
        """One event from the tap. ``arrived`` is when it reached this task: the jitter buffer
        times packets by when *it* can have them, so the hand-over from the asyncio thread is
        part of the jitter it absorbs; the quality figures use the network arrival time."""
        stats = self.stats
        if isinstance(event, MediaFrame):
            if event.received_at > self.last_activity:
                self.last_activity = event.received_at
            if not self.accept_media:
                stats.unpublished_packets += 1
                return
            kind = event.frame_type
            if event.ssrc not in self.ssrc_kinds:
                self.ssrc_kinds[event.ssrc] = kind
            if kind is FrameType.AUDIO:
                stats.audio_packets += 1
            else:
                stats.video_packets += 1
            self.quality.on_packet(event)
            result = self.sync.insert(event, arrived)
            if kind is FrameType.AUDIO and self.nack is not None:
                self._nack_packet(event)
            if result is InsertResult.LATE:
                stats.late_packets += 1
            elif result is InsertResult.DUPLICATE:
                stats.duplicate_packets += 1
        elif isinstance(event, ChannelMessage):
            self.last_activity = max(self.last_activity, event.at)
            stats.data_received += 1
            self._deliver(ReceivedData(self.peer_id, event.data, event.at))
        elif isinstance(event, SenderReport):
            self.last_activity = max(self.last_activity, event.received_at)
            sr_kind = self.ssrc_kinds.get(event.ssrc)
            if sr_kind is None:
                stats.unmatched_sender_reports += 1
                return
            stats.sender_reports += 1
            self.sender_reports[sr_kind] = event
            self.sync.on_sender_report(sr_kind, event)
        elif isinstance(event, ReceptionReport):
            self.last_activity = max(self.last_activity, event.received_at)
            stats.reception_reports += 1
            self.quality.on_reception_report(event, arrival_ntp=_ntp_now_at(event.received_at))
            if self.nack is not None:
                rtt_ms = self.quality.rtt_ms
                self.nack.set_rtt(None if rtt_ms is None else rtt_ms / 1000.0)
        elif isinstance(event, RembReport | RtcpActivity):
            self.last_activity = max(self.last_activity, event.received_at)

    def play(self, aligned: AlignedItem) -> None:
        """One item the SyncManager released: decode audio, hand video to the decode thread."""
        item = aligned.item
        sender = aligned.sender_unix_time
        if isinstance(item, AudioPacket):
            decoder = self.audio_decoder
            if decoder is None:
                decoder = self._new_audio_decoder(item.frame)
                if decoder is None:
                    return
            pcm = decoder.decode(item.frame.payload)
            if len(pcm):
                self.stats.audio_frames += 1
                self._play_audio(
                    pcm,
                    aligned.presentation_time,
                    sender,
                    item.frame.rtp_timestamp,
                    item.frame.received_at,
                    concealed=False,
                    stream=item.frame.ssrc,
                )
            return
        if isinstance(item, Gap):
            if item.frame_type is not FrameType.AUDIO:
                return
            self._play_gap(item, aligned.presentation_time, sender)
            return
        # A picture's local time is settled when it is delivered (video_local_time), where the
        # promise that a peer's local times never go backwards is kept. Raising last_presented to
        # the presentation time here would undo the audio stage's shift (a negative lead).
        if isinstance(item, VideoFrame):
            self._decode_video(aligned, item)
        elif (
            isinstance(item, KeyframeRequest)
            and self.decode_video
            and self.keyframes.need(time.monotonic())
        ):
            # The jitter buffer lost the decoder's references (once per loss episode). While video
            # is not decoded nobody needs them: resuming asks for a keyframe anyway.
            self._send_pli_soon()

    def set_decode_video(self, on: bool) -> None:
        """Decode this member's video (``on``) or let it pass undecoded.

        Why: at ``VIDEO_OFF`` the router drops every picture on arrival, yet each one had been
        decoded (VP9 on the link's thread: CPU and GIL hand-offs the audio path pays for). Off, the
        packets still go through the jitter buffer (loss, keyframe state and the timeline stay
        current) and the frames it releases are counted (``video_frames_shed``) and dropped; no
        keyframe is asked for. Back on, the decoder's references are gone: frames are skipped up
        to a keyframe and one is asked for, once (then retried by the policy as after any loss).
        """
        if on == self.decode_video:
            return
        self.decode_video = on
        if not on:
            return
        policy = self.keyframes
        policy.skipping = True
        if policy.need(time.monotonic()):
            self._send_pli_soon()

    def _new_audio_decoder(self, frame: MediaFrame) -> OpusDecoder | None:
        """The link's Opus decoder, for the first audio packet of a negotiated Opus stream."""
        codec = self.tap.codec(frame)
        if codec is None:
            return None
        if codec.mimeType.lower() != _OPUS:
            log.warning("peer %s: audio in %s is not decoded (Opus only)", self.peer_id, codec)
            return None
        self.audio_codec = codec.mimeType
        decoder = self.audio_decoder = OpusDecoder()
        return decoder

    def _play_gap(self, gap: Gap, presented: float, sender: float | None) -> None:
        """Lost audio packets: libopus's PLC for each, continuing from the decoder's state, except
        the last when the packet after it is already here (``gap.recovery``): that one is rebuilt
        from the next packet's in-band FEC data (PLC again inside libopus if it carries none).

        Each stands in for a packet as long as the newest decoded one (20 ms unless the sender
        uses another ptime); before any packet was decoded there is nothing to continue: silence.
        The frame counts as recovered only when FEC data was there; the item still says
        ``concealed`` (it stands in for a lost packet either way, for the drift stage and mix).
        """
        decoder = self.audio_decoder
        samples = AUDIO_FRAME_SAMPLES if decoder is None else decoder.frame_samples
        step = samples / STAGE_SAMPLE_RATE
        stats = self.stats
        last = gap.count - 1
        for i in range(gap.count):
            if decoder is None:
                pcm = np.zeros((samples, 2), dtype=np.float32)
                stats.concealed_frames += 1
            elif i == last and gap.recovery is not None:
                recovered = decoder.recovered
                pcm = decoder.recover(gap.recovery.payload, samples)
                if decoder.recovered > recovered:
                    stats.recovered_frames += 1
                else:
                    stats.concealed_frames += 1
            else:
                pcm = decoder.conceal(samples)
                stats.concealed_frames += 1
            stats.audio_frames += 1
            self._play_audio(
                pcm,
                presented + i * step,
                None if sender is None else sender + i * step,
                (gap.rtp_timestamp + i * samples) & 0xFFFFFFFF,
                None,
                concealed=True,
            )

    def _play_audio(
        self,
        pcm: npt.NDArray[np.float32],
        presented: float,
        sender: float | None,
        rtp_timestamp: int,
        received_at: float | None,
        *,
        concealed: bool,
        stream: int | None = None,
    ) -> None:
        """One decoded (or concealed) block through the link's drift compensation stage.

        What comes out is 960-sample frames whose local times advance by exactly 20 ms of our
        clock (docs/media-sync.md, "Drift compensation in the live path"), resampled by the drift
        estimator's factor once it is Stable: the router's grid then gets one frame per slot from
        a sender whose clock runs fast or slow. A frame's local time is the presentation time of
        its first sample, so it leaves the stage 5-25 ms after that time (resampler delay plus the
        part of a frame still being filled); video waits for it in :meth:`_video_results`.
        """
        when = self.audio_input_time = max(self.audio_input_time, presented)
        factor = applied_correction(self.sync.clock_drift_estimator)
        frames = self.audio_stage.push(
            pcm,
            when,
            factor,
            sender_time=sender,
            rtp_timestamp=rtp_timestamp,
            received_at=received_at,
            concealed=concealed,
            stream=stream,
        )
        for frame in frames:
            self.last_presented = max(self.last_presented, frame.local_time)
            self._deliver(
                ReceivedAudio(
                    self.peer_id,
                    frame.samples,
                    STAGE_SAMPLE_RATE,
                    frame.samples.shape[1],
                    frame.sender_time,
                    frame.local_time,
                    frame.concealed,
                    frame.rtp_timestamp,
                    frame.received_at,
                )
            )
        if frames:
            self._audio_progress.set()
            self._audio_progress = trio.Event()

    def video_local_time(self, presented: float) -> float:
        """The ``local_time`` of a picture the timeline presented at ``presented``.

        Audio leaves the drift compensation stage stamped by its own 20 ms frames, ``lead`` off
        the timeline until the stage's level trim has taken a timeline step back (seconds): a
        picture stamped with the plain presentation time showed that lead as A/V skew on the wire
        (-5..+16 ms per connection through a transport). So while audio flows, a picture takes the
        time the stage gives audio presented with it (:meth:`DriftCompensationStage.stamp_of`),
        and never goes before an item already delivered.
        """
        when = presented
        if self.audio_input_time >= presented - _AUDIO_FLOWING:
            when = self.audio_stage.stamp_of(presented)
        return max(self.last_presented, when)

    async def _wait_for_audio(self, presented: float) -> None:
        """Until the audio presented up to ``presented`` has left the audio stage (bounded).

        The stage delivers a frame once it is whole, up to 25 ms after its first sample's time;
        a picture delivered before that would put the peer's ``received`` out of time order and
        show ahead of its sound. Audio that is not flowing (nothing presented within
        ``_AUDIO_FLOWING`` of the picture) is not waited for.
        """
        stage = self.audio_stage
        with trio.move_on_after(_VIDEO_WAITS_FOR_AUDIO):
            while (
                stage.next_stamp is not None
                and stage.next_stamp <= stage.stamp_of(presented)
                and self.audio_input_time >= presented - _AUDIO_FLOWING
            ):
                await self._audio_progress.wait()

    def _decode_video(self, aligned: AlignedItem, item: VideoFrame) -> None:
        """Hand the frame to the link's decode thread (started with the first frame), in order.

        Decoding on the trio thread blocked it for ~20% of its time in the 3-peer demo, delaying
        every other peer's audio; :meth:`_video_results` delivers the pictures. Its ``local_time``
        is settled on delivery, so the received items keep non-decreasing local times.
        """
        if not self.decode_video:
            self.stats.video_frames_shed += 1
            return
        worker = self.video_worker
        if worker is None:
            codec = self.tap.codec(item.packets[0])
            if codec is None or self._nursery is None:
                return
            decoder = self.video_decoder = VideoDecoder(codec)
            worker = self.video_worker = DecodeWorker(
                f"meshrtc-video-{self.peer_id}",
                functools.partial(_decode_on_worker, decoder),
                max_pending=_VIDEO_BACKLOG,
                close_timeout=self._close_timeout,
            )
            self._nursery.start_soon(self._video_results, worker)
        policy = self.keyframes
        recognisable = self.keyframe_detectors.get(item.packets[0].payload_type) is not None
        if not policy.admit(keyframe=item.keyframe, recognisable=recognisable):
            self.stats.video_frames_dropped += 1
            return
        job = _VideoJob(
            item,
            aligned.sender_unix_time,
            aligned.presentation_time,
            keyframe=item.keyframe or not recognisable,
            number=policy.submissions + 1,
        )
        if not worker.submit(job):
            self.stats.video_frames_dropped += 1
            if not policy.skipping:
                log.info(
                    "peer %s: video decoding is %d frames behind; dropping until a keyframe",
                    self.peer_id,
                    worker.pending,
                )
            if policy.backlog_full(time.monotonic()):
                self._send_pli_soon()
            return
        policy.submitted()

    async def _video_results(self, worker: DecodeWorker[_VideoJob, _Decoded]) -> None:
        """The decode thread's pictures to ``deliver``, in frame order."""
        async for result in worker:
            job = result.job
            decoded = result.unwrap()  # a bug in the decoder ends the link's tasks, as inline
            if decoded.pictures:
                await self._wait_for_audio(job.presentation_time)
            when = self.last_presented = self.video_local_time(job.presentation_time)
            for picture in decoded.pictures:
                self.stats.video_frames += 1
                self.quality.set_video_resolution(picture.width, picture.height, when)
                self._deliver(
                    ReceivedVideo(
                        self.peer_id, picture, job.sender_time, when, job.frame.rtp_timestamp
                    )
                )
            self.stats.video_decode_errors += decoded.errors
            now = time.monotonic()
            if self.keyframes.decoded(
                now,
                pictures=len(decoded.pictures),
                errors=decoded.errors,
                keyframe=job.keyframe,
                number=job.number,
            ):
                self._send_pli_soon()

    def _nack_packet(self, frame: MediaFrame) -> None:
        """An audio packet for the NACK policy: it stops asking for it, or sees a new hole."""
        policy = self.nack
        assert policy is not None
        if frame.ssrc != self._nack_ssrc:
            policy.reset()
            self._nack_ssrc = frame.ssrc
            # Only where the answer said the sender takes audio NACKs (Chromium's does not).
            codec = self.tap.codec(frame)
            self._nack_negotiated = codec is not None and any(
                fb.type == "nack" and not fb.parameter for fb in codec.rtcpFeedback
            )
        if not self._nack_negotiated:
            return
        policy.on_packet(
            frame.sequence_number, frame.received_at, self.sync.audio_jitter_buffer.expected_playout
        )

    def _poll_nack(self, now: float) -> None:
        """Send the NACK the policy asks for now, if any (from a task of its own, like the PLI)."""
        policy = self.nack
        ssrc = self._nack_ssrc
        assert policy is not None
        assert ssrc is not None
        seqs = policy.poll(now, self.sync.audio_jitter_buffer.head_sequence)
        if seqs and self._nursery is not None:
            self.stats.audio_nacks += 1
            self._nursery.start_soon(self._send_nack, ssrc, seqs)

    async def _send_nack(self, ssrc: int, seqs: list[int]) -> None:
        try:
            await self.bridge.run(self.tap.send_nack, ssrc, seqs)
        except Exception as exc:  # noqa: BLE001 - a lost NACK is a lost packet, concealed as before
            log.debug("peer %s: audio NACK failed: %r", self.peer_id, exc)

    def _send_pli_soon(self) -> None:
        """Carry out the policy's "send a PLI now" (counted; sent from a task of its own)."""
        if self._nursery is None:
            return
        self.stats.keyframe_requests += 1
        self._nursery.start_soon(self._send_pli)

    async def _send_pli(self) -> None:
        try:
            await self.bridge.run(self.tap.request_keyframe)
        except Exception as exc:  # noqa: BLE001 - a lost PLI is retried by the policy
            log.debug("peer %s: keyframe request failed: %r", self.peer_id, exc)
