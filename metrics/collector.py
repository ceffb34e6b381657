"""The Prometheus collector: every series from state the server already has, read at scrape time.

GPU series come from the poller's latest reading (a scrape never calls NVML), the proxy counters from
the usage accounting (a listener on usage.log.UsageLog), the alert gauge from the alert engine.
"""
from __future__ import annotations

import threading
from collections import defaultdict
from typing import Callable, Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from usage.log import Usage
from vram.poller import PolledSnapshot

PREFIX = "vram_dashboard_"
MIB = 1024 * 1024


class ProxyCounters:
    """Requests per (endpoint, status) and tokens per (model, kind), counted as usage is recorded."""

    def __init__(self):
        self._lock = threading.Lock()
        self.requests: dict[tuple[str, str], int] = defaultdict(int)
        self.tokens: dict[tuple[str, str], int] = defaultdict(int)

    def observe(self, usage: Usage) -> None:
        with self._lock:
            self.requests[(usage.endpoint, str(usage.status))] += 1
            model = usage.model or ""
            if usage.prompt_tokens:
                self.tokens[(model, "prompt")] += usage.prompt_tokens
            if usage.completion_tokens:
                self.tokens[(model, "completion")] += usage.completion_tokens

    def copy(self) -> tuple[dict, dict]:
        with self._lock:
            return dict(self.requests), dict(self.tokens)


class DashboardCollector(Collector):
    """Yield the contract's metric families from the latest reading, the counters and the alerts."""

    def __init__(self, latest: Callable[[], PolledSnapshot | None], stale_after_s: Callable[[], float],
                 ollama_up: Callable[[], bool | None], alerts_firing: Callable[[], dict[str, int]],
                 counters: ProxyCounters):
        self._latest = latest
        self._stale_after_s = stale_after_s
        self._ollama_up = ollama_up
        self._alerts_firing = alerts_firing
        self._counters = counters
        self.collected: PolledSnapshot | None = None

    def describe(self) -> list[Metric]:
        return []  # collected at scrape time only; nothing to check at registration

    def current_reading(self) -> PolledSnapshot | None:
        """The latest reading if NVML answered it in time, else None (then no GPU series at all)."""
        polled = self._latest()
        if polled is not None and polled.snapshot.available and not polled.is_stale(self._stale_after_s()):
            return polled
        return None

    def collect(self) -> Iterator[Metric]:
        """The families that change between polls; the GPU and process ones are GpuCollector's.

        The reading judged here is kept in `collected`: the scrape adds the GPU series of that same
        reading, so that nvml_up and the GPU series agree even when it turns stale mid-scrape.
        """
        self.collected = self.current_reading()
        nvml_up = self.collected is not None
        yield _gauge("nvml_up", "1 when NVML answered the latest poll in time, else 0", value=float(nvml_up))
        ollama_up = self._ollama_up()
        if ollama_up is not None:
            yield _gauge("ollama_up", "1 when Ollama answered its latest reachability check", value=float(ollama_up))
        requests, tokens = self._counters.copy()
        family = CounterMetricFamily(PREFIX + "proxy_requests", "Requests through the /ollama proxy",
                                     labels=("endpoint", "status"))
        for labels, count in sorted(requests.items()):
            family.add_metric(labels, count)
        yield family
        family = CounterMetricFamily(PREFIX + "proxy_tokens", "Tokens Ollama reported through the proxy",
                                     labels=("model", "kind"))
        for labels, count in sorted(tokens.items()):
            family.add_metric(labels, count)
        yield family
        family = _gauge("alerts_firing", "Alerts firing now, per rule", labels=("rule",))
        for rule, count in self._alerts_firing().items():
            family.add_metric((rule,), count)
        yield family



class GpuCollector(Collector):
    """The GPU and process families of one reading: they change only when the poller takes another."""

    def __init__(self, polled: PolledSnapshot):
        self._polled = polled

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        snapshot = self._polled.snapshot
        named = ("gpu", "uuid", "name")
        memory = {"total": _gauge("gpu_memory_total_bytes", "GPU memory, total", labels=named),
                  "used": _gauge("gpu_memory_used_bytes", "GPU memory in use", labels=named),
                  "free": _gauge("gpu_memory_free_bytes", "GPU memory free", labels=named)}
        ids = ("gpu", "uuid")
        utilization = _gauge("gpu_utilization_ratio", "GPU utilisation (0-1)", labels=ids)
        memory_utilization = _gauge("gpu_memory_utilization_ratio", "Memory controller utilisation (0-1)",
                                    labels=ids)
        temperature = _gauge("gpu_temperature_celsius", "GPU temperature", labels=ids)
        power = _gauge("gpu_power_watts", "GPU power draw", labels=ids)
        up = _gauge("gpu_up", "1 when the GPU answers, 0 when it is lost", labels=ids)
        for gpu in snapshot.gpus:
            gpu_ids = (str(gpu.index), gpu.uuid or "")
            up.add_metric(gpu_ids, 0.0 if gpu.error is not None else 1.0)
            # An unsupported field (None) is left out, never exported as 0.
            for kind, mb in (("total", gpu.total_mb), ("used", gpu.used_mb), ("free", gpu.free_mb)):
                if mb is not None:
                    memory[kind].add_metric((*gpu_ids, gpu.name or ""), float(mb * MIB))
            if gpu.utilization is not None:
                utilization.add_metric(gpu_ids, gpu.utilization / 100.0)
            if gpu.memory_utilization is not None:
                memory_utilization.add_metric(gpu_ids, gpu.memory_utilization / 100.0)
            if gpu.temperature_c is not None:
                temperature.add_metric(gpu_ids, float(gpu.temperature_c))
            if gpu.power_w is not None:
                power.add_metric(gpu_ids, float(gpu.power_w))
        yield from memory.values()
        yield from (utilization, memory_utilization, temperature, power, up)
        processes = _gauge("process_gpu_memory_bytes", "GPU memory a process uses, as the driver reports it",
                           labels=("gpu", "pid", "process", "model"))
        per_model: dict[str, int] = defaultdict(int)
        for process in snapshot.processes:
            if process.used_mb is None:
                continue
            processes.add_metric((str(process.gpu_index), str(process.pid), process.name or "", process.model or ""),
                                 float(process.used_mb * MIB))
            if process.model:
                per_model[process.model] += process.used_mb * MIB
        yield processes
        models = _gauge("ollama_model_vram_bytes", "VRAM of the processes serving an Ollama model (driver's figures)",
                        labels=("model",))
        for model, size in sorted(per_model.items()):
            models.add_metric((model,), float(size))
        yield models


def _gauge(name: str, documentation: str, *, labels: tuple[str, ...] = (), value: float | None = None
           ) -> GaugeMetricFamily:
    if value is not None:
        return GaugeMetricFamily(PREFIX + name, documentation, value=value)
    return GaugeMetricFamily(PREFIX + name, documentation, labels=labels)
