"""Model building blocks: Transformer, EMA teacher, targets, losses, the data2vec model."""
