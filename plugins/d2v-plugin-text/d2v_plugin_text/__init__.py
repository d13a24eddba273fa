"""d2v text modality: sentencepiece tokenizer (RoBERTa ids) and data2vec text pretraining."""

__version__ = "0.1.0"
