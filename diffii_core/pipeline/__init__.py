"""The whole method: its steps (`steps.py`), which the service's worker runs one shard at a time, and
`augment` (`augment.py`), which runs them all in one process."""
