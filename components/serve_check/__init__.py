"""The serving check: the candidate served by the real server, its answers and figures checked before any publish."""
