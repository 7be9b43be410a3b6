"""Evaluation against a from-scratch baseline: metrics, label efficiency, verdict, interpretation, report.

    metrics.py           accuracy, macro-F1, per-class P/R/F1, confusion, ECE, intervals over seeds
    verdict.py           positive / no_gain / negative from intervals (the documented rule)
    label_efficiency.py  budgets x seeds orchestration, labels saved, time saved
    runner.py            comparison runs (probe, scratch, curve) through the training engine
    predict.py           probabilities over a dataset, robustness per corruption and severity
    assess.py            scores and explanations of one model
    interpret.py         class ideal inputs, adversarial pairs, FGSM accuracy
    plots.py / outputs.py  PNGs and the CSV tables behind dvc plots
    report.py            the self-contained HTML report
"""
