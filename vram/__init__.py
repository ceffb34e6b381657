"""GPU memory monitoring: the NVML reader, the poller, and the /api/vram routes."""
