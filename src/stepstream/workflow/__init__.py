"""Durable workflows: the registry, the step context, the engine, workers and the client."""
