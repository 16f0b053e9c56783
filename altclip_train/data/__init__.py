"""Data: parallel text corpora, WebDataset image-text shards, batching and on-disk embedding caches."""
