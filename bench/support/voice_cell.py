"""One cell of bench/voice_loss.py in a process of its own: one stack, one loss pattern, one clip.

Run by bench/voice_loss.py (``python bench/support/voice_cell.py --stack meshrtc --tree DIR ...``),
one process per cell so each meshrtc tree (``--tree``: a checkout's root, its ``src`` and ``tests``
are put first on ``sys.path``) is imported on its own and no state carries from cell to cell.

* ``meshrtc``: two directly wired PeerConnections on 127.0.0.1 (the tree's
  ``tests/peer_helpers.wired_pair``, audio only); alice sends the stream at real-time pace with
  capture timestamps; bob's ICE sockets lose the RTP datagrams the mask says
  (:func:`lose_on_arrival`), so bob's aiortc counts the loss and reports it to alice in its RTCP
  receiver reports, as on a real path; every ``ReceivedAudio`` (decoded, concealed or recovered)
  is kept.
* ``aiortc``: two plain aiortc 1.16 RTCPeerConnections on 127.0.0.1 (aiortc's own Opus encoder,
  receiver, jitter buffer and decoder; nothing of meshrtc but the loopback host-candidate lookup
  and :func:`lose_on_arrival`), the same mask, every frame of the remote track kept.

Writes an ``.npz``: ``offsets`` (each frame's position in samples from the stream's start: its RTP
timestamp for aiortc, which skips what it cannot decode; the sum of the frames before it for
meshrtc, which plays every slot), ``lengths`` and ``samples`` (the frames, mono float32, one after
the other), ``delays`` (output time minus capture time by the frame's RTP timestamp, seconds),
``concealed`` (per frame), and a JSON ``info`` (counters).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

sys.path.insert(0, str(Path(__file__).resolve().parent))

from voice_patterns import MaskDrop, loss_mask

RATE = 48_000
FRAME = 960
PTIME = 0.02
#: Silence sent after the clip so the last words leave every jitter buffer.
TAIL_SECONDS = 1.0
#: How long a cell may wait for the connection, and for the stream's end after the last send.
CONNECT_WITHIN = 20.0
DRAIN_WITHIN = 5.0
#: Seconds added to every datagram arriving at the receiver (``--delay-ms``; 0: loopback as is).
ARRIVAL_DELAY = 0.0

Frames = list[tuple[int, npt.NDArray[np.float32], float, bool]]


def lose_on_arrival(pc: Any, drop: MaskDrop) -> None:
    """Lose the RTP datagrams ``drop`` says as they arrive at ``pc``'s ICE sockets (loop thread).

    Below aiortc, as a network would: aiortc's receive statistics count the loss and its RTCP
    receiver reports tell the sender (whose FEC may follow them). The sockets come from the
    adapter's ``_stun_protocols`` (the tree's own, in both trees; the ICE attribute names it reads
    are in tests/test_aiortc_contract.py); their ``datagram_received`` is replaced on the instance,
    as the adapter's ``PathControl`` does. With :data:`ARRIVAL_DELAY`, what survives is handed on
    that much later (a longer path one way: the round trip a NACK needs grows by as much).
    """
    import asyncio

    from meshrtc.rtc import aiortc_adapter

    delay = ARRIVAL_DELAY
    for protocol in aiortc_adapter._stun_protocols(pc):
        receive = protocol.datagram_received

        def datagram_received(data: bytes, addr: Any, receive: Any = receive) -> None:
            if drop.datagram(data):
                return
            if delay > 0:
                asyncio.get_running_loop().call_later(delay, receive, data, addr)
            else:
                receive(data, addr)

        setattr(protocol, "datagram_received", datagram_received)  # noqa: B010


def _signed32(x: int) -> int:
    x &= 0xFFFFFFFF
    return x - (1 << 32) if x >= 1 << 31 else x


def _stream(clip: npt.NDArray[np.float32], preroll: int) -> npt.NDArray[np.float32]:
    """``preroll`` samples of the clip (repeated), the clip, then :data:`TAIL_SECONDS` of silence."""
    total = preroll + len(clip) + int(TAIL_SECONDS * RATE)
    total += -total % FRAME
    out = np.zeros(total, dtype=np.float32)
    out[:preroll] = np.resize(clip, preroll)
    out[preroll : preroll + len(clip)] = clip
    return out


async def run_meshrtc(
    stream: npt.NDArray[np.float32], drop: MaskDrop
) -> tuple[Frames, dict[str, Any]]:
    import trio
    from tests.peer_helpers import wired_pair

    from meshrtc.config import TransportConfig
    from meshrtc.media.frame import FrameType
    from meshrtc.rtc.events import ReceivedAudio
    from meshrtc.rtc.host_candidates import LOOPBACK, set_host_addresses
    from meshrtc.rtc.peer import PeerOptions

    set_host_addresses(LOOPBACK)
    frames: Frames = []
    total = len(stream)
    first_ts: list[int] = []
    capture_start: list[float] = []
    position = [0]
    done = trio.Event()
    config = TransportConfig(video_codec="H264")
    async with wired_pair(config=config, media=("audio",), options=PeerOptions()) as pair:
        nursery, a, b = pair.nursery, pair.a, pair.b
        await nursery.start(a.run)
        await nursery.start(b.run)
        await a.offer()
        with trio.fail_after(CONNECT_WITHIN):
            await a.wait_state("Connected")
            await b.wait_state("Connected")
        link: Any = b._link
        await pair.bridge.call(lose_on_arrival, link.pc, drop)

        async def collect() -> None:
            async for item in b.received:
                if not isinstance(item, ReceivedAudio) or item.rtp_timestamp is None:
                    continue
                if not first_ts:
                    first_ts.append(item.rtp_timestamp)
                # The delay from the item's RTP timestamp; its place from what came before:
                # meshrtc plays one item per 20 ms slot (concealed ones included), and the
                # timestamps it stamps after its drift stage may be a sample off.
                offset = _signed32(item.rtp_timestamp - first_ts[0])
                delay = item.local_time - (capture_start[0] + offset / RATE)
                mono = np.asarray(item.samples[:, 0], dtype=np.float32).copy()
                frames.append((position[0], mono, delay, bool(item.concealed)))
                position[0] += len(mono)
                if position[0] >= total:
                    done.set()

        nursery.start_soon(collect)
        start = time.monotonic() + 0.05
        capture_start.append(start)
        fec_on_at: list[float] = []

        async def watch_sender() -> None:
            # When alice's loss-driven FEC first came on (trees that have it), from the clip start.
            while not fec_on_at:
                decisions = getattr(a, "fec_decisions", ())
                if any(d.setting.inband_fec for d in decisions):
                    fec_on_at.append(time.monotonic() - start)
                await trio.sleep(0.05)

        nursery.start_soon(watch_sender)
        for k in range(total // FRAME):
            at = start + k * PTIME
            wait = at - time.monotonic()
            if wait > 0:
                await trio.sleep(wait)
            await a.send_audio(stream[k * FRAME : (k + 1) * FRAME], timestamp=at)
        with trio.move_on_after(DRAIN_WITHIN):
            await done.wait()
        stats = b.stats
        buffer = b.sync_manager.audio_jitter_buffer
        info = {
            "concealed_frames": stats.concealed_frames,
            "recovered_frames": getattr(stats, "recovered_frames", None),
            "late_packets": stats.late_packets,
            "jitter_target_ms": float(buffer.target_delay_ms),
            # The jitter buffer's split of the lost packets (trees with Gap.recovery): handed out
            # with the next packet (its FEC may rebuild them) or not (concealed outright).
            "recovery_offered": getattr(buffer, "recovery_offered_count", None),
            "unrecoverable": getattr(buffer, "unrecoverable_loss_count", None),
            "fec_on_after_s": fec_on_at[0] if fec_on_at else None,
            "fec_decisions": len(getattr(a, "fec_decisions", ())),
            "audio_bitrates": [
                applied
                for kind, _decision, applied in a.bitrate_decisions
                if kind is FrameType.AUDIO
            ],
        }
        nursery.cancel_scope.cancel()
    return frames, info


async def run_aiortc(
    stream: npt.NDArray[np.float32], drop: MaskDrop
) -> tuple[Frames, dict[str, Any]]:
    import asyncio

    import av
    from aiortc import MediaStreamTrack, RTCPeerConnection
    from aiortc.mediastreams import MediaStreamError

    from meshrtc.rtc import host_candidates

    host_candidates.install()
    host_candidates.set_host_addresses(host_candidates.LOOPBACK)
    pcm = (np.clip(stream, -1.0, 1.0) * 32767).astype(np.int16)
    total = len(stream)
    capture_start: list[float] = []

    class ClipTrack(MediaStreamTrack):
        """The stream at real-time pace, then silence; pts from 0 (aiortc adds its RTP offset)."""

        kind = "audio"

        def __init__(self) -> None:
            super().__init__()
            self.index = 0

        async def recv(self) -> av.AudioFrame:
            if self.readyState != "live":
                raise MediaStreamError
            if not capture_start:
                capture_start.append(time.monotonic())
            k = self.index
            self.index += 1
            wait = capture_start[0] + k * PTIME - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            chunk = pcm[k * FRAME : (k + 1) * FRAME]
            if len(chunk) < FRAME:
                chunk = np.zeros(FRAME, dtype=np.int16)
            frame = av.AudioFrame.from_ndarray(chunk.reshape(1, -1), format="s16", layout="mono")
            frame.sample_rate = RATE
            frame.pts = k * FRAME
            frame.time_base = _TIME_BASE
            return frame

    frames: Frames = []
    sender_pc, receiver_pc = RTCPeerConnection(), RTCPeerConnection()
    try:
        sender_pc.addTrack(ClipTrack())
        await sender_pc.setLocalDescription(await sender_pc.createOffer())
        await receiver_pc.setRemoteDescription(sender_pc.localDescription)
        (transceiver,) = receiver_pc.getTransceivers()
        remote = transceiver.receiver.track
        await receiver_pc.setLocalDescription(await receiver_pc.createAnswer())
        lose_on_arrival(receiver_pc, drop)  # its sockets exist; no check has run yet
        await sender_pc.setRemoteDescription(receiver_pc.localDescription)
        first_ts: int | None = None
        deadline = time.monotonic() + CONNECT_WITHIN + total / RATE + DRAIN_WITHIN
        while time.monotonic() < deadline:
            try:
                frame = await asyncio.wait_for(remote.recv(), timeout=DRAIN_WITHIN)
            except (TimeoutError, MediaStreamError):
                break
            now = time.monotonic()
            if first_ts is None:
                first_ts = int(frame.pts)
            offset = _signed32(int(frame.pts) - first_ts)
            data = frame.to_ndarray().reshape(-1, len(frame.layout.channels))[:, 0]
            mono = (data.astype(np.float32) / 32768.0).copy()
            frames.append((offset, mono, now - (capture_start[0] + offset / RATE), False))
            if offset + len(mono) >= total:
                break
    finally:
        await sender_pc.close()
        await receiver_pc.close()
    return frames, {"concealed_frames": None, "recovered_frames": None}


_TIME_BASE: Any = None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--stack", choices=("meshrtc", "aiortc"), required=True)
    parser.add_argument("--tree", type=Path, required=True, help="meshrtc checkout root")
    parser.add_argument("--clip", type=Path, required=True, help=".npy of 48 kHz mono float32")
    parser.add_argument("--pattern", default="random")
    parser.add_argument("--loss", type=float, default=0.0, help="0..1")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--preroll", type=int, default=0, help="samples sent before the clip")
    parser.add_argument("--delay-ms", type=float, default=0.0, help="added to every arrival")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    tree = args.tree.resolve()
    sys.path[:0] = [str(tree / "src"), str(tree)]

    global _TIME_BASE, ARRIVAL_DELAY
    ARRIVAL_DELAY = args.delay_ms / 1000
    import fractions

    _TIME_BASE = fractions.Fraction(1, RATE)
    clip = np.load(args.clip).astype(np.float32)
    stream = _stream(clip, args.preroll)
    drop = MaskDrop(loss_mask(args.pattern, args.loss, len(stream) // FRAME + 500, args.seed))
    if hasattr(drop, "resend_loss"):
        drop.resend_loss(args.loss, args.seed)  # a retransmission is lost like any packet
    if args.stack == "meshrtc":
        import trio

        frames, info = trio.run(run_meshrtc, stream, drop)
    else:
        import asyncio

        frames, info = asyncio.run(run_aiortc(stream, drop))
    import meshrtc

    info.update(
        dropped=drop.dropped,
        seen=drop.seen,
        resent=getattr(drop, "resent", 0),
        resent_lost=getattr(drop, "resent_lost", 0),
        dropped_in_clip=sum(
            1 for i in drop.dropped_indices if 0 <= i * FRAME - args.preroll < len(clip)
        ),
        clip_packets=len(clip) // FRAME,
        meshrtc=str(Path(meshrtc.__file__).resolve().parent),
    )
    np.savez(
        args.out,
        offsets=np.array([f[0] for f in frames], dtype=np.int64),
        lengths=np.array([len(f[1]) for f in frames], dtype=np.int64),
        samples=np.concatenate([f[1] for f in frames]) if frames else np.zeros(0, np.float32),
        delays=np.array([f[2] for f in frames], dtype=np.float64),
        concealed=np.array([f[3] for f in frames], dtype=bool),
        info=np.array(json.dumps(info)),
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
