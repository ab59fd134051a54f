"""The training stage's parts: Lightning plumbing, the pure fit-and-test core, the two jobs."""
