"""Placeholder until the fake NVML lands."""
