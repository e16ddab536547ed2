"""A whole run: `TrainConfig`, its command-line flags, the run directory, `run(config)`
and what a run writes.
"""
