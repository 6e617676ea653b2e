"""Stream sessions: StreamSession, SessionRouter and SessionManager."""
