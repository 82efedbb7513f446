"""The 18 TEL emotion classes, in the annotation files' index order: shared by the TEL data and the emotion task."""

EMOTIONS = (
    "affection", "anger", "anticipation", "aversion", "confident", "disconnection", "disquietment", "doubt",
    "embarrassment", "engagement", "esteem", "excitement", "happiness", "peace", "sadness", "suffering", "surprise",
    "sympathy",
)  # fmt: skip
