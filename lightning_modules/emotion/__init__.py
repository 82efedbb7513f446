"""TEL: temporal emotion localization over video and subtitles (arXiv 2208.01954)."""
