"""Benchmark runner: fit -> evaluate -> result record, the leaderboard and plots."""
