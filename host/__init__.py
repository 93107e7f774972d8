"""Host-side software for the board build."""
