"""Stream sessions: StreamSession, SessionRouter and SessionManager (see docs/transport.md)."""

from meshrtc.session.manager import RunningSession as RunningSession
from meshrtc.session.manager import SessionManager as SessionManager
from meshrtc.session.router import SessionRouter as SessionRouter
from meshrtc.session.stream import SessionError as SessionError
from meshrtc.session.stream import SessionPeer as SessionPeer
from meshrtc.session.stream import StreamSession as StreamSession
