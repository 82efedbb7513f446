"""Few-shot classification: COSOC (arXiv 2107.07746) and its baselines."""
