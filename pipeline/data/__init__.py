"""Data in: sources, tar shards + manifest, deterministic splits (docs/ingest.md).

    sources/   where images come from (digits, folders, tables, s3://, torchvision), streamed with a skip list
    pack.py    streamed images into tar shards, one manifest row each (hash, dedupe, header probe)
    build.py   a source into a dataset directory: pack, classes, manifest, splits.json, plots
    shards.py  the dataset directory: shard format, readers, the torch Dataset, GatedDataset (the gate's quarantine)
    splits.py  train/val/test splits and label budgets cut on a hash of each image's content
    images.py  stored bytes into what a model takes (upright 8-bit RGB)
    plots.py   class counts per split and image grids
"""
