"""Request size limits that the server enforces and the client checks before sending (no TensorFlow here)."""

# Bodies over this get 413 before they are read; the client refuses to send them.
MAX_BODY_BYTES = 16 * 1024 * 1024
# Vertex AI online prediction refuses requests over 1.5 MB (its quotas page); the client stays under it.
VERTEX_MAX_REQUEST_BYTES = 1_500_000
# On SIGTERM, how long requests in flight may take to finish: Kubernetes and Vertex send SIGKILL 30 s after it.
GRACE_SECONDS = 25.0
# Most instances in one request (the client sends more files in several requests).
MAX_INSTANCES = 64
# Request line and headers together: h11's default is 16 KiB, Node's 16 KiB, nginx's 4 buffers of 8 KiB.
MAX_HEAD_BYTES = 64 * 1024
# A request must arrive whole this many seconds after its first byte (16 MiB at ~0.6 MB/s), and a new connection
# must start one by then: half-sent requests must not hold connections and descriptors for ever.
REQUEST_TIMEOUT_S = 30.0
# Prediction requests in the server at once (reading, waiting, decoding, predicting); more get 503 with
# Retry-After at once instead of queueing (a queue of thousands made the next request wait tens of seconds).
MAX_IN_FLIGHT = 128
