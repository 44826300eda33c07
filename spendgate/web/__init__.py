"""Web: the only place HTTP routes are built. The loopback admin server (`server`), the
dashboard app with authentication and sessions (`app`) and its static files."""
