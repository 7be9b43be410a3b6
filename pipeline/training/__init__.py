"""The training engine shared by fine-tuning, the scratch baseline and the comparison runs.

    loop.py        Trainer: phases of a freeze plan, AdamW/SGD, warmup+cosine, AMP, early stopping,
                   checkpoints, resume
    data.py        the train/val datasets of a run (the model's preprocessing plus augmentation)
    recipes.py     one comparison run: a linear probe or a from-scratch model, by the engine
    featcache.py   frozen-backbone feature caching (head-only phases)
    ddp.py         torchrun + DistributedDataParallel (NCCL on CUDA, gloo on the CPU)
    augment.py     the augmentation suited to the input size
    checkpoint.py  per-epoch checkpoints
    curves.py      per-epoch history CSV and the curves PNG
"""
