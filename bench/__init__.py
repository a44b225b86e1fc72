"""Benchmarks of the course's own code against the naive baseline a learner would write (see README.md)."""
