"""The training engine shared by fine-tuning, the scratch baseline and the comparison runs.

    loop.py             Trainer: phases of a freeze plan, AdamW/SGD, warmup+cosine, AMP, early stopping,
                        checkpoints, resume
    data.py             the train/val datasets of a run (the model's preprocessing plus augmentation, small sets cycled)
    probe.py            the linear probe solved to the optimum (logistic regression, val-chosen penalty)
    recipes.py          training from scratch to convergence (the baseline and the curve's scratch runs)
    workers.py          independent runs side by side in worker processes, each on its share of the threads
    frozen_features.py  the frozen backbone's outputs, computed once in memory, that head-only phases train on
    ddp.py              torchrun + DistributedDataParallel (NCCL on CUDA, gloo on the CPU)
    augment.py          the augmentation suited to the input size
    checkpoint.py       per-epoch checkpoints
    curves.py           per-epoch history CSV and the curves PNG
    tracking.py         per-epoch metrics logged with DVCLive (dvc exp show / dvc plots)
    outputs.py          what a training stage writes (model, metrics, history, curves, DVCLive), fine-tune and
                        baseline alike
"""
