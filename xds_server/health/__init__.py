"""Health of the backends: pure verdict rules (verdict.py), HTTP probes (probe.py),
the checker that probes the intent's backends (checker.py), and the two ways its
verdicts reach the publisher: in this process (local.py) or shared by every
replica through Redis (shared.py). Both are a `HealthSource` (base.py)."""
