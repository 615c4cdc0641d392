"""Metrics and scoring: pure functions that compute and return; the callers decide what to save or write."""
