"""d2v audio modality: data2vec v1 speech pretraining (conv feature encoder, span masking,
FLAC/WAV/OGG decoding). Importing the package is cheap; torch loads with the components."""

__version__ = "0.1.0"
