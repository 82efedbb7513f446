"""Text-guided image editing: DE-Net (arXiv 2206.01160)."""
