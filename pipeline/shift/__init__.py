"""The domain-shift "current" set: ImageNet-C style corruptions of the test split, or a new batch.

    corruptions.py  the corruptions and their severity ladders, seeded per image
    current.py      building the current set (grid or random assignment, clean copies) and its figure
"""
