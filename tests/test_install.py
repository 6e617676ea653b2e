"""Explicit installation: importing meshrtc changes no aiortc/aioice global, open_bridge installs
meshrtc's patches, and ICE host addresses are chosen per connection, not per process."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
import textwrap

import attrs
import pytest
from aiortc import RTCPeerConnection

from meshrtc.rtc import host_candidates
from meshrtc.rtc.aiortc_adapter import PC_GATHER, use_host_addresses
from meshrtc.rtc.bridge import open_bridge

# Runs in a fresh interpreter: a fingerprint of every aiortc/aioice module global and class
# attribute (identity of each value; length of each list/dict, which install_vp9 extends in
# place), taken before and after importing meshrtc's modules.
_SNAPSHOT = textwrap.dedent(
    """
    import importlib, json, pkgutil, sys
    import aioice, aiortc

    def walk(package):
        for info in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
            importlib.import_module(info.name)

    walk(aiortc)
    walk(aioice)

    def fingerprint():
        seen = {}
        for name, module in sorted(sys.modules.items()):
            if not name.startswith(("aiortc", "aioice")) or module is None:
                continue
            for key, value in vars(module).items():
                seen[f"{name}.{key}"] = [id(value), len(value) if isinstance(value, (list, dict)) else None]
                if isinstance(value, type) and value.__module__ == name:
                    for attr, member in vars(value).items():
                        seen[f"{name}.{key}.{attr}"] = [id(member), None]
        codecs = sys.modules["aiortc.codecs"].CODECS
        for kind, entries in codecs.items():
            seen[f"CODECS[{kind}]"] = [len(entries), None]
        return seen

    before = fingerprint()
    for module in sys.argv[1:]:
        if module == "INSTALL":
            importlib.import_module("meshrtc.rtc.aiortc_adapter").install_aiortc_patches()
        else:
            importlib.import_module(module)
    after = fingerprint()
    changed = sorted(k for k in before if after.get(k) != before[k])
    print(json.dumps(changed))
    """
)


def _changed_by_import(*modules: str) -> list[str]:
    done = subprocess.run(
        [sys.executable, "-c", _SNAPSHOT, *modules],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    changed: list[str] = json.loads(done.stdout.strip().splitlines()[-1])
    return changed


def test_importing_meshrtc_changes_no_aiortc_or_aioice_global() -> None:
    changed = _changed_by_import(
        "meshrtc",
        "meshrtc.rtc",
        "meshrtc.rtc.aiortc_adapter",
        "meshrtc.rtc.bridge",
        "meshrtc.rtc.peer",
        "meshrtc.rtc.peers",
        "meshrtc.transport",
        "meshrtc.demo",
    )
    assert changed == []


def test_the_snapshot_sees_an_installation() -> None:
    """The check above can fail: the same snapshot catches what install_aiortc_patches changes."""
    changed = _changed_by_import("meshrtc.rtc.aiortc_adapter", "INSTALL")
    assert "aiortc.rtcrtpsender.get_encoder" in changed
    assert "aiortc.rtcpeerconnection.is_codec_compatible" in changed
    assert "aioice.ice.get_host_addresses" in changed
    assert "CODECS[video]" in changed


async def test_open_bridge_installs_the_patches() -> None:
    from aiortc import rtcrtpsender

    from meshrtc.rtc import aiortc_adapter

    async with open_bridge():
        assert host_candidates.installed()
        assert rtcrtpsender.get_encoder is aiortc_adapter._patched_get_encoder
        assert any(aiortc_adapter.is_vp9(c) for c in aiortc_adapter._aiortc_codecs.CODECS["video"])


def _host_candidates(sdp: str) -> set[str]:
    return {m.group(1) for m in re.finditer(r"a=candidate:\S+ \d+ udp \d+ (\S+) \d+ typ host", sdp)}


async def test_two_connections_each_gather_only_their_own_addresses() -> None:
    """Both gather at once on one loop (their gatherings interleave): neither sees the other's."""
    async with open_bridge() as bridge:

        async def offers() -> list[str]:
            pcs = [RTCPeerConnection() for _ in range(3)]
            try:
                use_host_addresses(pcs[0], ["127.0.0.1"])
                use_host_addresses(pcs[1], ["127.0.0.2"])
                use_host_addresses(pcs[2], None)  # the process default (conftest: loopback)
                for pc in pcs:
                    pc.addTransceiver("audio")

                async def offer(pc: RTCPeerConnection) -> str:
                    await pc.setLocalDescription(await pc.createOffer())
                    return str(pc.localDescription.sdp)

                return list(await asyncio.gather(*(offer(pc) for pc in pcs)))
            finally:
                await asyncio.gather(*(pc.close() for pc in pcs))

        first, second, default = await bridge.run(offers)
    assert _host_candidates(first) == {"127.0.0.1"}
    assert _host_candidates(second) == {"127.0.0.2"}
    assert _host_candidates(default) == set(host_candidates.LOOPBACK)
    assert host_candidates.host_addresses() == host_candidates.LOOPBACK  # nothing leaked out


def test_use_host_addresses_wraps_only_that_instance() -> None:
    pc, other = RTCPeerConnection(), RTCPeerConnection()
    use_host_addresses(pc, ["127.0.0.2"])
    assert PC_GATHER in vars(pc)
    assert PC_GATHER not in vars(other)
    use_host_addresses(other, None)  # None: nothing to scope, nothing wrapped
    assert PC_GATHER not in vars(other)


@pytest.mark.parametrize("addresses", [None, ("::1",)])
def test_gathering_on_scopes_and_restores(addresses: tuple[str, ...] | None) -> None:
    before = host_candidates.host_addresses()
    with host_candidates.gathering_on(addresses):
        assert host_candidates.host_addresses() == (addresses or before)
    assert host_candidates.host_addresses() == before


def _host_addresses_of(candidates: list[str]) -> set[str]:
    return {c.split()[4] for c in candidates if c.split()[6:8] == ["typ", "host"]}


async def test_two_peers_with_different_ice_host_addresses_each_use_their_own() -> None:
    """Two meshrtc PeerConnections in one process, one bridge: alice pins 127.0.0.1, bob
    127.0.0.2. Each offers only its own address and the pair ICE selects joins the two."""
    import trio

    from meshrtc.config import TransportConfig

    from .peer_helpers import wired_pair

    alice = TransportConfig(video_codec="VP8", ice_host_addresses=["127.0.0.1"])
    bob = attrs.evolve(alice, ice_host_addresses=["127.0.0.2"])
    async with wired_pair(config=alice, b_config=bob, media=("audio",)) as pair:
        a, b = pair.a, pair.b
        await pair.nursery.start(a.run)
        await pair.nursery.start(b.run)
        await a.offer()
        with trio.fail_after(15):
            await a.wait_state("Connected")
            await b.wait_state("Connected")
        assert _host_addresses_of(a.local_candidates) == {"127.0.0.1"}
        assert _host_addresses_of(b.local_candidates) == {"127.0.0.2"}
        pair_a, pair_b = await a.candidate_pair(), await b.candidate_pair()
        assert pair_a is not None
        assert pair_b is not None
        assert (pair_a.local_address[0], pair_a.remote_address[0]) == ("127.0.0.1", "127.0.0.2")
        assert (pair_b.local_address[0], pair_b.remote_address[0]) == ("127.0.0.2", "127.0.0.1")
        await a.aclose()
        await b.aclose()
