"""Stage 3: train a Keras classifier from TFRecords with tf.data and export a SavedModel."""
