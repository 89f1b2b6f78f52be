"""A whole measured run: every competitor on every case, as records, with the machine.

The records and the machine description make up the results dictionary that
``python -m bench`` prints and writes as JSON; :mod:`bench.report` turns it
into tables and a plot.
"""

import datetime
import os
import platform
import sys
import time
from pathlib import Path

import numba
import numpy as np

import numba_ln

from . import timer
from .cases import figures
from .competitors import Unavailable, Workspace, competitors, prepare, torch_module

#: Schema tag of the JSON the command writes.
SCHEMA = "numba-ln-bench/1"


class Progress:
    """A one-line progress bar on stderr (one line per step when not a terminal).

    Parameters
    ----------
    total : int
    stream : file, optional
    """

    def __init__(self, total, stream=None):
        self.total = max(total, 1)
        self.done = 0
        self.stream = stream or sys.stderr
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.start = time.perf_counter()

    def show(self, label, detail=None):
        """Show the step about to run (``detail``: the part of it, on a terminal only)."""
        if detail is not None:
            if not self.tty:
                return
            label = f"{label}: {detail}"
        width = 24
        filled = width * self.done // self.total
        bar = "#" * filled + "." * (width - filled)
        elapsed = time.perf_counter() - self.start
        line = f"[{bar}] {self.done}/{self.total} {elapsed:5.0f}s  {label}"
        if self.tty:
            self.stream.write("\r" + line[:119].ljust(119))
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def step(self):
        """Count a finished step."""
        self.done += 1

    def close(self):
        """End the line."""
        if self.tty:
            self.stream.write("\r" + " " * 119 + "\r")
            self.stream.flush()


def run(case_list, devices=("cpu",), workspace=None, budget_s=timer.DEFAULT_BUDGET_S,
        progress=None, skipped=None):
    """Measure every competitor on every case.

    Parameters
    ----------
    case_list : list of Case
    devices : iterable of str
    workspace : Workspace, optional
    budget_s : float
        Seconds of timed calls per competitor; the competitors of a case are
        timed in interleaved rounds (:func:`bench.timer.measure`), the
        roofline kernels as followers.
    progress : Progress, optional
    skipped : dict, optional
        Filled with ``{"label (device)": reasons}`` for competitors that
        could not run for some case (distinct reasons joined by ``"; "``).

    Returns
    -------
    list of dict
        One record per (case, competitor): see :func:`records`.
    """
    workspace = workspace or Workspace()
    skipped = {} if skipped is None else skipped
    found = []
    for case in case_list:
        entries = prepare_all(case, competitors(devices, case.operation), workspace, progress,
                              skipped)
        before, start = cpu_seconds(), time.perf_counter()
        timings = timer.measure([e.call for e in entries], budget_s,
                                followers={i for i, e in enumerate(entries)
                                           if e.competitor.roofline})
        others = others_share(before, cpu_seconds(), time.perf_counter() - start)
        best = {}  # a roofline's fastest kernel stands for it
        for entry, timing in zip(entries, timings):
            key = entry.competitor.id
            if key not in best or timing.best_s < best[key][1].best_s:
                best[key] = (entry, timing)
        del entries
        found += records(case, list(best.values()), others)
        if progress:
            progress.step()
    workspace.clear()
    if progress:
        progress.close()
    return found


def prepare_all(case, competitor_list, workspace, progress, skipped):
    """Prepare every competitor that can run ``case`` here; note the others in ``skipped``.

    Parameters
    ----------
    case : Case
    competitor_list : list of Competitor
    workspace : Workspace
    progress : Progress or None
    skipped : dict
        See :func:`run`.

    Returns
    -------
    list of Prepared
    """
    if progress:
        progress.show(case.group)
    entries = []
    for competitor in competitor_list:
        if progress:
            progress.show(case.group, f"preparing {competitor.label} ({competitor.device})")
        try:
            entries += prepare(competitor, case, workspace)
        except Unavailable as exc:
            note(skipped, f"{competitor.label} ({competitor.device})", str(exc))
    if progress:
        progress.show(case.group, f"timing {len(entries)} implementations")
    return entries


def note(skipped, name, reason):
    """Add a reason, on one line, to ``skipped[name]`` unless it is there already."""
    reason = " ".join(reason.split())
    known = skipped.get(name)
    if known is None:
        skipped[name] = reason
    elif reason not in known:
        skipped[name] = f"{known}; {reason}"


def records(case, timed, others=None):
    """One case's timings as records with GB/s, roofline fraction and speedups.

    Parameters
    ----------
    case : Case
    timed : list of (Prepared, Timing)
    others : float, optional
        The share of the CPUs other processes used while the case was timed
        (:func:`others_share`).

    Returns
    -------
    list of dict
        The case (``operation``, ``rows``, ``cols``, ``shape``, ``dtype``,
        ``group``, ``small``), the competitor (``implementation``, ``key``,
        ``device``, ``roofline``, ``kernel``), ``bytes``, the timing
        (``best_s``, ``median_s``, ``samples``, ``loops``), :func:`figures`
        and the speedups over NumPy, PyTorch and (the fused residual add)
        numba-ln unfused on the same device (None where absent), and
        ``others_cpu`` (``others``).
    """
    by_key = {(p.competitor.device, p.competitor.key): timing for p, timing in timed}
    found = []
    for prepared, timing in timed:
        competitor = prepared.competitor
        roofline = by_key.get((competitor.device, "roofline"))
        numpy_t = by_key.get(("cpu", "numpy"))
        torch_t = by_key.get((competitor.device, "torch"))
        unfused_t = by_key.get((competitor.device, "numba_ln_unfused"))
        found.append({
            "operation": case.operation, "rows": case.rows, "cols": case.cols,
            "shape": case.label, "dtype": case.dtype, "group": case.group,
            "small": case.small, "implementation": competitor.label, "key": competitor.key,
            "device": competitor.device, "roofline": competitor.roofline,
            "kernel": prepared.kernel, "bytes": case.bytes_moved, "best_s": timing.best_s,
            "median_s": timing.median_s, "samples": timing.samples, "loops": timing.loops,
            **figures(case, timing.best_s, roofline.best_s if roofline else None),
            "speedup_vs_numpy": numpy_t.best_s / timing.best_s if numpy_t else None,
            "speedup_vs_torch": torch_t.best_s / timing.best_s if torch_t else None,
            "speedup_vs_unfused": unfused_t.best_s / timing.best_s if unfused_t else None,
            "others_cpu": others,
        })
    return found


def cpu_model():
    """The CPU's marketing name, as the OS reports it."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _size_bytes(text):
    """``"32K"``, ``"1M"`` or ``"512"`` (as sysfs writes cache sizes) in bytes."""
    text = text.strip().upper()
    scale = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(text[-1:], 1)
    return int(text[:-1] if scale > 1 else text) * scale


def cache_sizes(root="/sys/devices/system/cpu/cpu0/cache"):
    """The data caches of the first CPU, smallest first; ``[]`` where none can be read.

    Read from Linux's sysfs (``index*/level``, ``type``, ``size``; Python's
    ``os.sysconf`` knows no cache names). L1d and L2 are usually per core, L3
    shared.

    Parameters
    ----------
    root : str or Path, optional
        The sysfs folder of one CPU's caches.

    Returns
    -------
    list of dict
        ``{"name": "L1d", "bytes": 32768}``, one per level (instruction caches
        left out).
    """
    found = {}
    for index in sorted(Path(root).glob("index*")):
        try:
            level = int((index / "level").read_text())
            kind = (index / "type").read_text().strip()
            size = _size_bytes((index / "size").read_text())
        except (OSError, ValueError):
            continue
        if kind != "Instruction" and size > 0:
            found[f"L{level}d" if kind == "Data" else f"L{level}"] = size
    return [{"name": name, "bytes": size} for name, size in sorted(found.items(),
                                                                   key=lambda item: item[1])]


#: In shorter windows the 10 ms clock ticks' rounding (+-20 ms of CPU time)
#: is more than +-10 % of two cores.
MIN_SHARE_WINDOW_S = 0.1


def cpu_seconds():
    """CPU seconds so far: the machine's busy time and this process's; None off Linux.

    The machine's comes from ``/proc/stat`` in clock ticks (10 ms; time the
    hypervisor stole counts as busy), this process's from ``getrusage``.
    """
    try:
        import resource  # Unix only
        fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()
        user, nice, system, _, _, irq, softirq, steal = map(int, fields[1:9])
        per_second = os.sysconf("SC_CLK_TCK")
    except (ImportError, OSError, ValueError, AttributeError):
        return None
    own = resource.getrusage(resource.RUSAGE_SELF)
    return ((user + nice + system + irq + softirq + steal) / per_second,
            own.ru_utime + own.ru_stime)


def others_share(before, after, wall_s):
    """The share of the machine's CPUs that other processes used between two readings.

    Parameters
    ----------
    before, after : tuple or None
        :func:`cpu_seconds` at the start and the end.
    wall_s : float
        Seconds between them.

    Returns
    -------
    float or None
        0 (nobody else) to 1 (every core busy with others); None when either
        reading is missing or the window is under :data:`MIN_SHARE_WINDOW_S`.

    Examples
    --------
    >>> others_share((10.0, 1.0), (12.0, 2.0), 1.0) * (os.cpu_count() or 1)
    1.0
    """
    if before is None or after is None or wall_s < MIN_SHARE_WINDOW_S:
        return None
    others = (after[0] - before[0]) - (after[1] - before[1])
    return min(1.0, max(0.0, others / (wall_s * (os.cpu_count() or 1))))


def load_average():
    """The 1-, 5- and 15-minute load averages, or None where the OS has none."""
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except (OSError, AttributeError):
        return None


def environment():
    """Machine, versions and date, for the JSON and the report.

    Returns
    -------
    dict
        ``date`` (UTC, ISO 8601), ``machine`` (system, CPU model, cores,
        threads, threading layer, memory, data caches, GPU) and ``versions``.
    """
    versions = {"numba_ln": numba_ln.__version__,
                "python": platform.python_version(), "numba": numba.__version__,
                "numpy": np.__version__}
    machine = {"system": platform.platform(), "architecture": platform.machine(),
               "cpu_model": cpu_model(), "cores": os.cpu_count(),
               "numba_threads": numba.get_num_threads(), "caches": cache_sizes()}
    try:
        machine["threading_layer"] = numba.threading_layer()
    except ValueError:
        machine["threading_layer"] = str(numba.config.THREADING_LAYER)
    try:
        pages, page_size = os.sysconf("SC_PHYS_PAGES"), os.sysconf("SC_PAGE_SIZE")
        machine["memory_bytes"] = pages * page_size
    except (ValueError, OSError, AttributeError):
        machine["memory_bytes"] = None
    try:
        torch = torch_module()
        versions["torch"] = torch.__version__
        machine["torch_threads"] = torch.get_num_threads()
    except Unavailable:
        versions["torch"] = None
    try:
        import numba_cuda
        versions["numba_cuda"] = getattr(numba_cuda, "__version__", "unknown")
    except ImportError:
        versions["numba_cuda"] = None
    cuda = numba_ln.backends()["cuda"]
    machine["gpu"] = cuda.detail if cuda.available and not numba.config.ENABLE_CUDASIM else None
    date = datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0)
    return {"date": date.isoformat(), "machine": machine, "versions": versions}
