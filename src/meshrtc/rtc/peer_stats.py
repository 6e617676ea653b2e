"""The counters of one PeerConnection over its life (all links).

Its own module because both the PeerConnection and its per-link
:class:`~meshrtc.rtc.receiver.MediaReceiver` count into the same object, and the receiver must not
import the connection.
"""

from __future__ import annotations

import attrs

__all__ = ["PeerStats"]


@attrs.define
class PeerStats:
    """Counters over the PeerConnection's life (all links)."""

    audio_packets: int = 0
    video_packets: int = 0
    #: Packets the jitter buffers refused: behind the playout point (or too old), or copies.
    late_packets: int = 0
    duplicate_packets: int = 0
    sender_reports: int = 0
    #: Sender Reports for an SSRC no packet has been seen from yet (dropped: its kind is unknown).
    unmatched_sender_reports: int = 0
    reception_reports: int = 0
    #: Audio items delivered: decoded packets, and lost ones either recovered from the next
    #: packet's in-band FEC data or concealed (libopus PLC; rtc/opus.py).
    audio_frames: int = 0
    concealed_frames: int = 0
    recovered_frames: int = 0
    video_frames: int = 0
    video_decode_errors: int = 0
    #: Video frames not decoded because decoding fell behind (rtc/receiver.py ``_VIDEO_BACKLOG``),
    #: and the frames after such a drop skipped until the next keyframe (they reference it).
    video_frames_dropped: int = 0
    #: Video frames not decoded because nobody needed them (load shedding at ``VIDEO_OFF``:
    #: ``MediaReceiver.set_decode_video``).
    video_frames_shed: int = 0
    keyframe_requests: int = 0
    #: RTCP NACKs sent for lost audio packets (media/nack.py; the policy's own counters say how
    #: many packets were asked for and came back in time: ``MediaReceiver.nack.stats``).
    audio_nacks: int = 0
    data_sent: int = 0
    data_received: int = 0
    #: Items dropped because nobody read ``received`` in time.
    received_dropped: int = 0
    #: Remote candidates refused by validation.
    invalid_candidates: int = 0
    #: RTP packets dropped on arrival because the remote may not publish (its token lacks the
    #: ``publish`` grant): they never reach a jitter buffer, a decoder or the pipeline.
    unpublished_packets: int = 0
    #: Colliding offers ignored (we are the impolite, lower id) and answers to abandoned attempts.
    ignored_offers: int = 0
    stale_answers: int = 0
    #: Offers we could not answer at all (the offerer got a ``peer.error``).
    refused_offers: int = 0
    #: Links built (the first connection and every rebuild) and reconnections that succeeded.
    links: int = 0
    reconnects: int = 0
