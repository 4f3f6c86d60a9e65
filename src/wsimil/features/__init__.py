"""Feature extraction: the extractor registry, batched extraction, the HDF5 feature store."""
