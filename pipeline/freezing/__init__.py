"""What the freeze stage decides: which blocks of the chosen network train, at which learning rates.

    blocks.py  block_of, freeze_to, set_train_mode (BatchNorm policy), block_lrs, param_groups
    plan.py    FreezePlan / Phase, the strategies (linear_probe, partial, full, gradual, lp_ft), the auto rule
"""
