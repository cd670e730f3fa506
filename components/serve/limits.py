"""Request size limits that the server enforces and the client checks before sending (no TensorFlow here)."""

# Bodies over this get 413 before they are read; the client refuses to send them.
MAX_BODY_BYTES = 16 * 1024 * 1024
# Vertex AI online prediction refuses requests over 1.5 MB (its quotas page); the client stays under it.
VERTEX_MAX_REQUEST_BYTES = 1_500_000
# On SIGTERM, how long requests in flight may take to finish: Kubernetes and Vertex send SIGKILL 30 s after it.
GRACE_SECONDS = 25.0
