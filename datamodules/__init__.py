"""LightningDataModules, one per data family, each reading the real on-disk format (toy data is written in it)."""
