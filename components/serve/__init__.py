"""Serving: the HTTP prediction server (same code locally and in the Vertex serving container) and its client."""
