"""Runnable examples (each is exercised by the tests)."""
