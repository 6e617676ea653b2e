"""Signaling: how peers find each other and exchange SDP and ICE candidates (docs/signaling.md).

``protocol`` is the sans-IO JSON-RPC 2.0 layer; ``server`` and ``client`` move its messages over
trio-websocket. Import those modules directly; this package stays light so importing the protocol
does not pull in trio.
"""
