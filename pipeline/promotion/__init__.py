"""Promotion: whether a candidate becomes champion, and the registry moves that follow.

    evalset.py     the evaluation set a candidate and the champion are scored on; each version's data record
    blessing.py    the checks a candidate passes before it becomes champion
    decide.py      one decision: a candidate against the champion, blessed on the evaluation set
    candidate.py   a run's candidate registered, and crowned when blessed (the promote stage's whole job)
    operations.py  the registry operations people run by hand (list, show, promote, rollback)

The registry (pipeline/registry.py) stores the results."""
