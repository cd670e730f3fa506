"""What the monitor compares: the per-image profile the SavedModel computes (its `serving_profile` signature),
the baseline of held-out profiles stored beside each version, and the server's request log lines.

serving_profile:  image_bytes tf.string [N], as serving_default
                  -> serving_default's outputs (probabilities, labels, classes), plus
                     embedding   float32 [N, EMBEDDING_DIM]: the penultimate layer's output times a fixed random
                                 projection (seed 0) stored in the SavedModel; no signature when the model has no
                                 single penultimate layer to read
                     image_stats float32 [N, 5]: IMAGE_STATS of the decoded image, before resizing

The server logs one JSON line per image (LOG_FIELDS) into `requests-*.jsonl` files under its --log-requests
folder; `baseline.json` (BASELINE_FILE) beside the SavedModel holds the same fields for the held-out images.
"""

from __future__ import annotations

from components.contracts import PROFILE_PIXELS_SIGNATURE, PROFILE_SIGNATURE

# Nothing heavy at import: `catsdogs --help` reads the defaults below.
EMBEDDING_DIM = 16
PROJECTION_SEED = 0
IMAGE_STATS = ("width", "height", "brightness", "colourfulness", "greyscale")
BASELINE_FILE = "baseline.json"
REQUEST_LOG_GLOB = "requests-*.jsonl"
LOG_FIELDS = ("time", "version", "label", "probabilities", "embedding", "image_stats")
# Rows of the baseline kept for the two-sample tests: enough for KS and MMD to see a shift of a few percent, small
# enough that baseline.json stays a few hundred KB. Class shares are counted over every held-out image.
BASELINE_SAMPLE = 2000
# A decoded image counts as greyscale when its channels differ by less than this on average (0..255): JPEG's
# chroma noise on a grey photo stays under 1, a muted colour photo is well above 3.
GREY_CHANNEL_SPREAD = 2.0


# Decimals both sides are compared at: the baseline stores them so, and a log writer may round too. Unrounded, a
# sure model's 0.99999994 against the baseline's 1.0 was a confidence "shift" in every unshifted window (measured).
DECIMALS = 5
# The monitor's verdicts and their exit status (for alerting; 2 is bad input, as for every command).
DRIFT, NO_DRIFT, TOO_FEW = "drift", "no drift", "too few requests"
EXIT_STATUS = {NO_DRIFT: 0, DRIFT: 1, TOO_FEW: 3}
DEFAULT_MIN_REQUESTS = 100
# Family-wise false-alarm rate of one monitoring run: 0.01 keeps a daily monitor to about 4 false alarms a year.
DEFAULT_ALPHA = 0.01


def projection(features: int):
    """The fixed [features, EMBEDDING_DIM] random projection (Johnson-Lindenstrauss: distances kept roughly)."""
    import numpy as np

    rng = np.random.default_rng(PROJECTION_SEED)
    return (rng.standard_normal((features, EMBEDDING_DIM)) / np.sqrt(EMBEDDING_DIM)).astype(np.float32)


def decode_with_stats(image_bytes, image_size: int):
    """(float32 [S, S, 3] pixels, exactly decode_and_resize's, and float32 [5] IMAGE_STATS) from one decode:
    width and height of the upright image before any scaling, brightness (pixel mean, 0..1), colourfulness
    (Hasler and Suesstrunk 2003, 0 for grey, ~100 for vivid photos) and greyscale 1/0. The statistics are read
    from the image as decoded for the model (a large JPEG at 1/2..1/8 scale), which both baseline and requests
    share; decoding again at full size for them cost ~2x per large photo."""
    import tensorflow as tf

    from components.decode import decode_upright_uint8

    decoded = decode_upright_uint8(image_bytes, image_size)
    pixels = tf.round(tf.image.resize(decoded, [image_size, image_size]))  # decode_and_resize's last step
    height, width = tf.shape(decoded)[0], tf.shape(decoded)[1]
    # A JPEG decoded at a DCT scale: its stored size, turned as the EXIF orientation turned the pixels.
    jpeg = tf.equal(tf.strings.substr(image_bytes, 0, 2), b"\xff\xd8")
    stored = tf.where(jpeg, tf.io.extract_jpeg_shape(tf.where(  # it fails on other formats: they get a tiny JPEG
        jpeg, image_bytes, tf.io.encode_jpeg(tf.zeros([8, 8, 1], tf.uint8))))[:2],
                      tf.stack([height, width]))
    turned = tf.not_equal(stored[0] >= stored[1], height >= width)
    height, width = tf.where(turned, stored[1], stored[0]), tf.where(turned, stored[0], stored[1])
    return pixels, image_stats(decoded, height, width)


def image_stats(image, height, width):
    """float32 [5] IMAGE_STATS of one [H, W, 3] image (0..255, any dtype) whose original size is height x width."""
    import tensorflow as tf

    # Every k-th pixel, about 64 along the shorter side: the statistics of a photo do not need all of them, and
    # over all pixels of the decoded image they cost the logged server 12-16% of its throughput (measured).
    stride = tf.maximum(1, tf.minimum(tf.shape(image)[0], tf.shape(image)[1]) // 64)
    image = tf.cast(image[::stride, ::stride], tf.float32)
    r, g, b = image[..., 0], image[..., 1], image[..., 2]
    rg, yb = r - g, 0.5 * (r + g) - b
    colourfulness = (tf.sqrt(tf.math.reduce_variance(rg) + tf.math.reduce_variance(yb))
                     + 0.3 * tf.sqrt(tf.reduce_mean(rg) ** 2 + tf.reduce_mean(yb) ** 2))
    spread = tf.reduce_mean(tf.reduce_max(image, axis=-1) - tf.reduce_min(image, axis=-1))
    return tf.stack([tf.cast(width, tf.float32), tf.cast(height, tf.float32), tf.reduce_mean(image) / 255.0,
                     colourfulness, tf.cast(spread < GREY_CHANNEL_SPREAD, tf.float32)])


def penultimate_model(model):
    """A Keras model from the model's input to its last layer's input (the penultimate output), or None when
    there is no such single tensor (a subclassed model, several heads)."""
    import keras

    try:
        features = model.layers[-1].input
        if isinstance(features, (list, tuple)) or len(features.shape) != 2:
            return None
        return keras.Model(model.inputs, features)
    except (AttributeError, ValueError, IndexError):
        return None


def profile_endpoint(archive, model, answer, image_size: int) -> bool:
    """Adds the PROFILE_SIGNATURE (encoded images) and PROFILE_PIXELS_SIGNATURE (pixels) signatures to a
    keras.export.ExportArchive; `answer` is the export's head output -> {probabilities, labels, classes} function,
    so the profile's answers are serving_default's. The embedding and the answer come from one pass through the
    model when its last layer makes its output (the penultimate output goes on through that layer).
    False (no signatures) when the model's penultimate layer cannot be found."""
    import tensorflow as tf

    features = penultimate_model(model)
    if features is None:
        return False
    archive.track(features)
    head = model.layers[-1]
    try:
        one_pass = head.output is model.outputs[0] and len(model.outputs) == 1
    except (AttributeError, ValueError):
        one_pass = False
    matrix = tf.constant(projection(int(features.output.shape[-1])))

    def profiled(pixels):
        penultimate = features(pixels, training=False)
        outputs = head(penultimate, training=False) if one_pass else model(pixels, training=False)
        return {**answer(outputs), "embedding": tf.matmul(tf.cast(penultimate, tf.float32), matrix)}

    def from_bytes(image_bytes):
        pixels, stats = tf.map_fn(
            lambda b: decode_with_stats(b, image_size), image_bytes,
            fn_output_signature=(tf.TensorSpec([image_size, image_size, 3], tf.float32),
                                 tf.TensorSpec([len(IMAGE_STATS)], tf.float32)))
        return {**profiled(pixels), "image_stats": stats}

    def from_pixels(pixels):
        return profiled(tf.image.resize(tf.cast(pixels, tf.float32), [image_size, image_size]))

    archive.add_endpoint(PROFILE_SIGNATURE, from_bytes,
                         input_signature=[tf.TensorSpec([None], tf.string, name="image_bytes")])
    archive.add_endpoint(PROFILE_PIXELS_SIGNATURE, from_pixels,
                         input_signature=[tf.TensorSpec([None, None, None, 3], tf.float32, name="pixels")])
    return True
