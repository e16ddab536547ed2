"""Images in: sources (folders, TFDS, builtin, arrays), seeded splits, image scanning
and decoding, the `tf.data` pipeline, augmentation, and the doctor's checks.
"""
