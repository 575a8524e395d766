"""Sagas: definitions, the engine, storage and recovery."""
