"""Model selection: which pretrained candidate suits the data, scored on cached features.

    candidates.py  filters (input, budgets, weights, latency), scores and the pick rule
    scoring.py     LogME, out-of-fold kNN and linear-probe accuracy, bootstrap intervals
    figures.py     the score-vs-cost figure
    result.py      reading selection.json (the freeze stage's input)
"""
