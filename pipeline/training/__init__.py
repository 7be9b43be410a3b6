"""The fine-tuning engine: freezing primitives and plans, the training loop, feature caching, DDP,
augmentation and the saved model (state dict + model card).

    freezing.py   block_of, freeze_to, set_train_mode (BatchNorm policy), block_lrs, param_groups
    plan.py       FreezePlan / Phase, strategies (linear_probe, partial, full, gradual, lp_ft), the auto rule
    loop.py       Trainer: phases, AdamW/SGD, warmup+cosine, AMP, early stopping, checkpoints, resume
    featcache.py  frozen-backbone feature caching (head-only phases)
    ddp.py        torchrun + DistributedDataParallel (NCCL on CUDA, gloo on the CPU)
    augment.py    train/eval transforms suited to the input size
    modelcard.py  save_model, load_for_inference
"""
