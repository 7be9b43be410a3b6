"""Promotion: the evaluation set a candidate and the champion are scored on (evalset), and the checks
a candidate passes before it becomes champion (blessing). The promote stage (pipeline/stages/promote.py)
runs them; the registry (pipeline/registry.py) stores the result."""
