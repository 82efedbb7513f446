"""Image-text retrieval with Shapley interactions (LOUPE, arXiv 2208.02515)."""
