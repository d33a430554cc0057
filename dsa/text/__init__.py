"""Text for the model: the corpus (fetched, split, tokenized, cached), tokenizers, deterministic LM batches,
and synthetic tasks whose relevant positions are known."""
