"""The fan-out benchmark: one writer, many readers, through each server under test."""

__all__: list[str] = []
