"""How busy the machine was while the figures were taken: a latency means little without it.

``LoadMonitor`` records the load average, the CPUs, the system-wide CPU utilisation over the run
(mean and the busiest second) and the CPU used by the processes that matter (the demo client and,
under ``make demo``, the server it started), through psutil.
"""

from __future__ import annotations

import os
import platform
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import psutil


@dataclass
class MachineLoad:
    cpu_model: str
    cpu_count: int  # logical CPUs of the machine
    cpus_usable: int  # CPUs this process may run on (affinity; containers often restrict it)
    loadavg_start: tuple[float, float, float]  # 1, 5, 15 min, when the run started
    loadavg_end: tuple[float, float, float]
    duration_s: float
    cpu_percent_mean: float  # all CPUs, 0..100, over the whole run
    cpu_percent_max: float  # the busiest one-second sample
    process_cpu_percent: dict[str, float] = field(default_factory=dict)  # per watched process, % of one CPU

    def as_dict(self) -> dict:
        return asdict(self)

    def line(self) -> str:
        procs = ", ".join(f"{name} {pct:.0f}%" for name, pct in self.process_cpu_percent.items())
        text = (
            f"machine: {self.cpus_usable}/{self.cpu_count} CPUs ({self.cpu_model}), load average "
            f"{self.loadavg_start[0]:.2f} -> {self.loadavg_end[0]:.2f}, CPU busy "
            f"{self.cpu_percent_mean:.0f}% mean, {self.cpu_percent_max:.0f}% peak"
        )
        return text + (f"; of one CPU: {procs}" if procs else "")


def cpu_model() -> str:
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text(errors="replace").splitlines():
            if line.lower().startswith(("model name", "hardware", "cpu model")):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def _round3(load: tuple[float, float, float]) -> tuple[float, float, float]:
    return (round(load[0], 2), round(load[1], 2), round(load[2], 2))


def _busy_and_total(times) -> tuple[float, float]:
    total = sum(times)
    idle = times.idle + getattr(times, "iowait", 0.0)
    return total - idle, total


def _percent(start, end) -> float:
    busy0, total0 = _busy_and_total(start)
    busy1, total1 = _busy_and_total(end)
    return 100.0 * (busy1 - busy0) / (total1 - total0) if total1 > total0 else 0.0


class LoadMonitor:
    """``start()`` ... ``stop() -> MachineLoad``; samples once a second on a daemon thread."""

    def __init__(self, processes: dict[str, int] | None = None, interval_s: float = 1.0):
        self.pids = processes if processes is not None else {"client": os.getpid()}
        self.interval_s = interval_s
        self._stop = threading.Event()
        self._samples: list[float] = []
        self._thread: threading.Thread | None = None

    def start(self) -> LoadMonitor:
        self._started = time.monotonic()
        self._load0 = os.getloadavg()
        self._cpu0 = psutil.cpu_times()
        self._procs = {}
        for name, pid in self.pids.items():
            try:
                proc = psutil.Process(pid)
                self._procs[name] = (proc, sum(proc.cpu_times()[:2]))
            except psutil.Error:
                continue  # gone already: reported as absent
        self._thread = threading.Thread(target=self._sample, name="load-monitor", daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        last = psutil.cpu_times()
        while not self._stop.wait(self.interval_s):
            now = psutil.cpu_times()
            self._samples.append(_percent(last, now))
            last = now

    def stop(self) -> MachineLoad:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        duration = max(time.monotonic() - self._started, 1e-6)
        mean = _percent(self._cpu0, psutil.cpu_times())
        per_process = {}
        for name, (proc, cpu0) in self._procs.items():
            try:
                per_process[name] = 100.0 * (sum(proc.cpu_times()[:2]) - cpu0) / duration
            except psutil.Error:
                continue  # exited before the end of the run
        return MachineLoad(
            cpu_model=cpu_model(),
            cpu_count=psutil.cpu_count(logical=True) or 0,
            cpus_usable=len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 0,
            loadavg_start=_round3(self._load0),
            loadavg_end=_round3(os.getloadavg()),
            duration_s=round(duration, 3),
            cpu_percent_mean=round(mean, 1),
            cpu_percent_max=round(max([*self._samples, mean]), 1),
            process_cpu_percent={k: round(v, 1) for k, v in per_process.items()},
        )
