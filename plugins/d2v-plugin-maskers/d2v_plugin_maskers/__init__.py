"""d2v-plugin-maskers: extra maskers for d2v (``inverse-block``: data2vec 2.0 image masking)."""

__version__ = "0.1.0"
