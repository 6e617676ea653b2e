"""PipelineRunner: runs a manifest on trio, one task per node, bounded channels between them.

Shape of a run::

    stream.inputs ──> [inputs] ──> source nodes ──> ... ──> output nodes ──> stream.outputs
                      (fans each item out to every source node that accepts its kind)

* Every edge is a bounded ``trio`` memory channel (``channel_capacity`` items). A node that is slower
  than its producer makes the producer wait in ``send``: back pressure reaches ``stream.inputs``, and a
  caller that prefers dropping to waiting uses ``send_nowait`` and handles ``trio.WouldBlock``.
* Fan-out sends the *same object* to each downstream node that accepts it; fan-in is several upstream
  nodes sending into one node's channel. Nothing is copied on the way.
* A node raising ends the run: the runner cancels everything (including the body of the ``async with``)
  and raises :class:`PipelineError` naming the node, with the node's exception as ``__cause__``.
* Leaving the ``async with`` block cancels whatever still runs. To drain instead, close
  ``stream.inputs`` and read ``stream.outputs`` to its end first: each node finishes its input, flushes
  and closes its outputs, and ``stream.outputs`` ends when every output node has.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterable, AsyncIterator, Iterable
from contextlib import asynccontextmanager

import attrs
import trio

from meshrtc.errors import ConfigError
from meshrtc.pipeline.data import RuntimeData
from meshrtc.pipeline.errors import PipelineError
from meshrtc.pipeline.manifest import Manifest
from meshrtc.pipeline.node import Node

__all__ = ["PipelineRunner", "PipelineStream", "RunStats"]

logger = logging.getLogger(__name__)

#: Pseudo node id of the task that fans pipeline inputs out to the source nodes.
INPUTS_ID = "<inputs>"


@attrs.define
class RunStats:
    """Counters of one run, readable while it runs."""

    inputs: int = 0
    #: Items that left through ``stream.outputs``.
    outputs: int = 0
    #: Inputs that no source node accepts (e.g. video sent to an audio-only pipeline).
    unrouted: int = 0
    #: Items a node emitted that no downstream node accepts, or whose consumer had gone.
    dropped: int = 0


@attrs.define(eq=False)
class PipelineStream:
    """The two ends of a running pipeline.

    ``inputs`` may be cloned, one clone per feeding task (per peer): the pipeline sees the end of its
    input once every clone is closed. Items carry their ``peer_id``; outputs carry ``to_peer``
    (``None`` = broadcast) so a router can send each one where it belongs.
    """

    inputs: trio.MemorySendChannel[RuntimeData]
    outputs: trio.MemoryReceiveChannel[RuntimeData]
    stats: RunStats
    manifest: Manifest

    async def send(self, data: RuntimeData) -> None:
        await self.inputs.send(data)


@attrs.define(eq=False)
class _Target:
    accepts: tuple[type[RuntimeData], ...]
    channel: trio.MemorySendChannel[RuntimeData]
    is_output: bool = False
    alive: bool = True


class _Emitter:
    """A node's ``emit``: delivers one object, by reference, to every downstream that accepts it."""

    __slots__ = ("_is_inputs", "_node_id", "_stats", "_targets")

    def __init__(
        self, node_id: str, targets: list[_Target], stats: RunStats, *, is_inputs: bool = False
    ) -> None:
        self._node_id = node_id
        self._targets = targets
        self._stats = stats
        self._is_inputs = is_inputs

    async def __call__(self, data: object) -> None:
        if not isinstance(data, RuntimeData):
            what = "received" if self._is_inputs else "emitted"
            raise TypeError(f"{what} a {type(data).__name__}, not RuntimeData")
        delivered = False
        for target in self._targets:
            if not (target.alive and isinstance(data, target.accepts)):
                continue
            try:
                await target.channel.send(data)
            except trio.BrokenResourceError:
                # The consumer finished early (or the caller closed stream.outputs): not an error.
                target.alive = False
                continue
            delivered = True
            if target.is_output:
                self._stats.outputs += 1
        if not delivered:
            if self._is_inputs:
                self._stats.unrouted += 1
            else:
                self._stats.dropped += 1

    def close(self) -> None:
        for target in self._targets:
            target.channel.close()


class _Run:
    """The wiring and failure bookkeeping of one execute_streaming call."""

    def __init__(self, manifest: Manifest, capacity: int) -> None:
        self.manifest = manifest
        self.stats = RunStats()
        self.failure: PipelineError | None = None
        self.cancel_scope: trio.CancelScope | None = None

        self.nodes: dict[str, Node] = {}
        for spec in manifest.nodes:
            try:
                self.nodes[spec.id] = spec.instantiate()
            except Exception as exc:
                raise PipelineError(spec.id, spec.node_type, f"could not start: {exc!r}") from exc

        inbox_send: dict[str, trio.MemorySendChannel[RuntimeData]] = {}
        self.inboxes: dict[str, trio.MemoryReceiveChannel[RuntimeData]] = {}
        for spec in manifest.nodes:
            inbox_send[spec.id], self.inboxes[spec.id] = trio.open_memory_channel[RuntimeData](
                capacity
            )
        out_send, out_recv = trio.open_memory_channel[RuntimeData](capacity)
        in_send, self.in_recv = trio.open_memory_channel[RuntimeData](capacity)

        output_nodes = set(manifest.output_nodes)
        self.emitters: dict[str, _Emitter] = {}
        for spec in manifest.nodes:
            targets = [
                _Target(self.nodes[d].accepts, inbox_send[d].clone())
                for d in manifest.downstream(spec.id)
            ]
            if spec.id in output_nodes:
                targets.append(_Target((RuntimeData,), out_send.clone(), is_output=True))
            self.emitters[spec.id] = _Emitter(spec.id, targets, self.stats)
        self.inputs_emitter = _Emitter(
            INPUTS_ID,
            [_Target(self.nodes[s].accepts, inbox_send[s].clone()) for s in manifest.source_nodes],
            self.stats,
            is_inputs=True,
        )
        for channel in inbox_send.values():
            channel.close()
        out_send.close()
        self.stream = PipelineStream(in_send, out_recv, self.stats, manifest)

    def fail(self, node_id: str, node_type: str, exc: Exception) -> None:
        if self.failure is None:
            error = PipelineError(node_id, node_type, repr(exc))
            error.__cause__ = exc
            self.failure = error
            logger.warning("pipeline stopped: %s", error, exc_info=exc)
        else:
            logger.warning("pipeline node %r also failed: %r", node_id, exc, exc_info=exc)
        if self.cancel_scope is not None:
            self.cancel_scope.cancel()

    async def run_node(self, node_id: str) -> None:
        node = self.nodes[node_id]
        emitter = self.emitters[node_id]
        try:
            async with self.inboxes[node_id] as inbox:
                await node.run(inbox, emitter)
        except Exception as exc:  # noqa: BLE001  (any node failure ends the run as a PipelineError)
            self.fail(node_id, self.manifest.node(node_id).node_type, exc)
        finally:
            emitter.close()

    async def distribute(self) -> None:
        emit = self.inputs_emitter
        try:
            async with self.in_recv as inbox:
                async for data in inbox:
                    self.stats.inputs += 1
                    await emit(data)
        except Exception as exc:  # noqa: BLE001  (a bad input ends the run as a PipelineError)
            self.fail(INPUTS_ID, "inputs", exc)
        finally:
            emit.close()

    async def feed(
        self,
        send: trio.MemorySendChannel[RuntimeData],
        inputs: Iterable[RuntimeData] | AsyncIterable[RuntimeData],
    ) -> None:
        try:
            async with send:
                if isinstance(inputs, AsyncIterable):
                    async for data in inputs:
                        await send.send(data)
                else:
                    for data in inputs:
                        await send.send(data)
        except trio.BrokenResourceError:
            pass  # the pipeline stopped taking inputs; its own outcome is reported
        except Exception as exc:  # noqa: BLE001  (a failing input iterator ends the run too)
            self.fail(INPUTS_ID, "inputs", exc)


def _only_cancelled(exc: BaseException) -> bool:
    if isinstance(exc, trio.Cancelled):
        return True
    if isinstance(exc, BaseExceptionGroup):
        return exc.split(trio.Cancelled)[1] is None
    return False


class PipelineRunner:
    """Executes manifests; holds no per-run state, so one runner can serve many sessions at once."""

    def __init__(self, *, channel_capacity: int = 8) -> None:
        if not 1 <= channel_capacity <= 10_000:
            raise ConfigError("channel_capacity", channel_capacity, "1..10000 items")
        self.channel_capacity = channel_capacity

    @asynccontextmanager
    async def execute_streaming(
        self,
        manifest: Manifest,
        inputs: Iterable[RuntimeData] | AsyncIterable[RuntimeData] | None = None,
    ) -> AsyncIterator[PipelineStream]:
        """Run ``manifest`` for the duration of the ``async with`` block.

        Without ``inputs`` the caller feeds ``stream.inputs`` (a session feeding many peers); with
        ``inputs`` the runner feeds them and then ends the input (``stream.inputs`` is closed).
        Read results from ``stream.outputs``. Raises :class:`PipelineError` if a node failed.
        """
        run = _Run(manifest, self.channel_capacity)
        name = manifest.metadata.get("name", manifest.source)
        logger.debug("pipeline %r starting with %d nodes", name, len(run.nodes))
        body_exc: BaseException | None = None
        async with trio.open_nursery() as nursery:
            run.cancel_scope = nursery.cancel_scope
            nursery.start_soon(run.distribute)
            for node_id in run.nodes:
                nursery.start_soon(run.run_node, node_id)
            if inputs is not None:
                nursery.start_soon(run.feed, run.stream.inputs.clone(), inputs)
                run.stream.inputs.close()
            try:
                yield run.stream
            except BaseException as exc:  # noqa: BLE001  (re-raised below, after the teardown)
                body_exc = exc
            nursery.cancel_scope.cancel()
        logger.debug("pipeline %r stopped: %s", name, run.stats)
        if run.failure is not None and (body_exc is None or _only_cancelled(body_exc)):
            raise run.failure from run.failure.__cause__
        if body_exc is not None:
            raise body_exc

    async def execute(
        self, manifest: Manifest, data: RuntimeData | Iterable[RuntimeData]
    ) -> list[RuntimeData]:
        """Unary run: feed ``data`` (one item or several), end the input, return every output."""
        items = [data] if isinstance(data, RuntimeData) else list(data)
        async with self.execute_streaming(manifest, items) as stream:
            return [out async for out in stream.outputs]
