"""Evaluation against a from-scratch baseline: metrics, label efficiency, verdict, interpretation, report.

    metrics.py           accuracy, macro-F1, per-class P/R/F1, confusion (scikit-learn), ECE, intervals over seeds
    verdict.py           positive / no_gain / negative from intervals (the documented rule)
    label_efficiency.py  budgets x seeds orchestration, the curve's runs, labels saved, time saved
    comparison.py        the evaluate stage's pieces: probe settings, learning curves, verdict, metrics.json
    assess.py            scores and explanations of one loaded model
    robustness.py        accuracy per corruption and severity
    interpret.py         class ideal inputs, adversarial pairs, FGSM accuracy
    plots.py / outputs.py  PNGs and the CSV tables behind dvc plots
    report.py            the self-contained HTML report (templates/report.html.j2)
"""
