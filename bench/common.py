"""Shared helpers for the benchmarks: CLI flags, progress logging, percentiles, reports.

Every bench follows the same contract: a readable table on stdout, then exactly one line of
JSON as the last line of stdout holding every figure measured, each with its target::

    {"bench": "core", "quick": false, "ok": true, "meta": {...},
     "figures": {"durable_16_commits_per_s": {"value": 35000, "target": ">= 30000",
                                              "unit": "commits/s", "ok": true}, ...}}

Progress and timings go to stderr (``logging``), so stdout stays machine-readable.
``--quick`` asks for a run of under a minute; ``--check`` makes a missed target exit 1.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import logging
import math
import os
import platform
import re
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

REPO_ROOT = Path(__file__).resolve().parent.parent

log = logging.getLogger("voicehub.bench")


def add_repo_to_path() -> None:
    """Make ``import core`` work when a bench is run as ``python bench/x.py``."""
    root = str(REPO_ROOT)
    if root not in sys.path:
        sys.path.insert(0, root)


# ---------------------------------------------------------------- command line, logging


def base_parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--quick", action="store_true", help="a short run (under a minute)")
    p.add_argument(
        "--tmp-dir",
        type=Path,
        default=None,
        help="where the fresh data directories are created (default: the system temp dir;"
        " it must be on the disk you want to measure, not tmpfs)",
    )
    p.add_argument("--check", action="store_true", help="exit 1 if any target is missed")
    p.add_argument("-v", "--verbose", action="store_true", help="also show the store's logs")
    return p


def setup_logging(verbose: bool = False) -> None:
    """Bench progress at INFO on stderr; the store's own logs only with ``--verbose``."""
    logging.basicConfig(
        stream=sys.stderr,
        level=logging.INFO,
        format="%(asctime)s.%(msecs)03d %(message)s",
        datefmt="%H:%M:%S",
    )
    logging.getLogger("voicehub").setLevel(logging.INFO if verbose else logging.WARNING)
    log.setLevel(logging.INFO)


@contextlib.contextmanager
def phase(name: str) -> Iterator[None]:
    """Log the start and the duration of a phase."""
    log.info("%s ...", name)
    t0 = time.perf_counter()
    try:
        yield
    finally:
        log.info("%s done in %.2f s", name, time.perf_counter() - t0)


class Progress:
    """Progress lines for a long loop: ``tick(done)`` logs at most once per ``every_s``."""

    def __init__(self, what: str, total: int, every_s: float = 2.0) -> None:
        self.what = what
        self.total = total
        self.every_s = every_s
        self.t0 = time.perf_counter()
        self._last = self.t0

    def tick(self, done: int) -> None:
        now = time.perf_counter()
        if now - self._last >= self.every_s:
            self._last = now
            el = now - self.t0
            log.info(
                "  %s: %s / %s (%.0f%%), %.1f s elapsed",
                self.what,
                f"{done:,}",
                f"{self.total:,}",
                100.0 * done / max(1, self.total),
                el,
            )


@contextlib.contextmanager
def fresh_dir(base: Path | None, prefix: str) -> Iterator[Path]:
    """A new empty directory, removed afterwards."""
    with tempfile.TemporaryDirectory(prefix=f"vh-bench-{prefix}-", dir=base) as d:
        yield Path(d)


class GcTimer:
    """Time spent in Python's cyclic garbage collector while the block runs (gc.callbacks)."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self.max_pause = 0.0
        self.collections = [0, 0, 0]
        self._t = 0.0

    def _callback(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._t = time.perf_counter()
            return
        dt = time.perf_counter() - self._t
        self.seconds += dt
        self.max_pause = max(self.max_pause, dt)
        gen = int(info.get("generation", 0))
        if 0 <= gen < 3:
            self.collections[gen] += 1

    def __enter__(self) -> GcTimer:
        gc.callbacks.append(self._callback)
        return self

    def __exit__(self, *exc: object) -> None:
        gc.callbacks.remove(self._callback)


def settle() -> None:
    """Collect garbage left by the previous run so it is not charged to the next one."""
    gc.collect()


@contextlib.contextmanager
def gc_paused(enabled: bool = True) -> Iterator[None]:
    """Collect, freeze the survivors and switch the cyclic GC off for the block (then undo).

    With many objects resident a full collection takes long enough to dominate tail
    latencies of µs-scale operations; benches that use this must say so in their output.
    ``enabled=False`` leaves the collector alone (to measure with it running).
    """
    if not enabled:
        yield
        return
    was_enabled = gc.isenabled()
    gc.collect()
    gc.freeze()
    gc.disable()
    try:
        yield
    finally:
        gc.unfreeze()
        if was_enabled:
            gc.enable()


def full_gc_pause_s() -> float:
    """The duration of one full ``gc.collect()`` with what is resident now."""
    t0 = time.perf_counter()
    gc.collect()
    return time.perf_counter() - t0


# ---------------------------------------------------------------- statistics


def percentile(values: Sequence[float], p: float) -> float:
    """The ``p``-th percentile (0..100), linearly interpolated; ``values`` may be unsorted."""
    if not values:
        return math.nan
    s = sorted(values)
    if len(s) == 1:
        return float(s[0])
    k = (len(s) - 1) * p / 100.0
    lo = math.floor(k)
    hi = min(lo + 1, len(s) - 1)
    return float(s[lo] + (s[hi] - s[lo]) * (k - lo))


def median(values: Sequence[float]) -> float:
    return percentile(values, 50.0)


def count_label(n: int) -> str:
    """A short label for a size in figure names: 1000 -> '1k', 10**6 -> '1m', 1500 -> '1500'."""
    for div, suffix in ((1_000_000_000, "g"), (1_000_000, "m"), (1_000, "k")):
        if n >= div and n % div == 0:
            return f"{n // div}{suffix}"
    return str(n)


# ---------------------------------------------------------------- environment


def fs_type(path: Path) -> str:
    """The filesystem type holding ``path`` (Linux ``/proc/mounts``), or ``unknown``."""
    try:
        real = str(path.resolve())
        best, kind = "", "unknown"
        with open("/proc/mounts") as f:
            for line in f:
                parts = line.split()
                if len(parts) < 3:
                    continue
                mnt = parts[1].replace("\\040", " ")
                inside = real == mnt or real.startswith(mnt.rstrip("/") + "/")
                if inside and len(mnt) > len(best):
                    best, kind = mnt, parts[2]
        return kind
    except OSError:
        return "unknown"


def environment(data_base: Path | None) -> dict[str, Any]:
    base = data_base or Path(tempfile.gettempdir())
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "data_dir_base": str(base),
        "data_dir_fs": fs_type(base),
    }


def load_average() -> float | None:
    """The 1-minute load average (other work competing for the CPUs), if known."""
    try:
        return round(os.getloadavg()[0], 2)
    except (OSError, AttributeError):
        return None


def rss_bytes() -> int:
    """Current resident set size (Linux), else the peak RSS from ``getrusage``."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak if sys.platform == "darwin" else peak * 1024


# ---------------------------------------------------------------- targets and the report

_TARGET = re.compile(r"^\s*(>=|<=|>|<|==)\s*([-+0-9.eE_,]+)")


def meets(value: float, target: str | None) -> bool | None:
    """Whether ``value`` meets a target like ``">= 30000"``; None without a target."""
    if target is None:
        return None
    m = _TARGET.match(target)
    if m is None:
        return None
    op, raw = m.groups()
    bound = float(raw.replace("_", "").replace(",", ""))
    if op == ">=":
        return value >= bound
    if op == "<=":
        return value <= bound
    if op == ">":
        return value > bound
    if op == "<":
        return value < bound
    return value == bound


@dataclass
class Figure:
    name: str
    value: float
    unit: str = ""
    target: str | None = None
    note: str = ""
    reference: str = ""
    """A comparison figure shown beside the value (e.g. another system's result)."""

    @property
    def ok(self) -> bool | None:
        return meets(self.value, self.target)

    def as_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"value": _json_number(self.value), "target": self.target}
        if self.unit:
            out["unit"] = self.unit
        out["ok"] = self.ok
        if self.note:
            out["note"] = self.note
        if self.reference:
            out["reference"] = self.reference
        return out


def _json_number(v: float) -> float | int | None:
    if isinstance(v, bool):
        return int(v)
    if isinstance(v, int):
        return v
    if not math.isfinite(v):
        return None
    if v == 0:
        return 0.0
    digits = max(0, 4 - math.floor(math.log10(abs(v))))
    return round(v, digits)


def fmt_value(v: float) -> str:
    if isinstance(v, int) and not isinstance(v, bool):
        return f"{v:,}"
    if not math.isfinite(v):
        return "n/a"
    a = abs(v)
    if a >= 1000:
        return f"{v:,.0f}"
    if a >= 100:
        return f"{v:.1f}"
    if a >= 1:
        return f"{v:.2f}"
    return f"{v:.3g}"


def _fmt_any(v: Any) -> str:
    return fmt_value(v) if isinstance(v, int | float) and not isinstance(v, bool) else str(v)


@dataclass
class Report:
    bench: str
    quick: bool
    meta: dict[str, Any] = field(default_factory=dict)
    sections: dict[str, list[Figure]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def add(
        self,
        section: str,
        name: str,
        value: float,
        unit: str = "",
        target: str | None = None,
        note: str = "",
        reference: str = "",
    ) -> Figure:
        if any(f.name == name for figs in self.sections.values() for f in figs):
            raise ValueError(f"figure {name!r} reported twice")
        fig = Figure(name, value, unit, target, note, reference)
        self.sections.setdefault(section, []).append(fig)
        status = {True: "ok", False: "MISSED", None: ""}[fig.ok]
        log.info(
            "  %s = %s %s%s %s",
            name,
            fmt_value(value),
            unit,
            f" (target {target})" if target else "",
            status,
        )
        return fig

    def note(self, text: str) -> None:
        self.notes.append(text)

    @property
    def figures(self) -> list[Figure]:
        return [f for figs in self.sections.values() for f in figs]

    @property
    def ok(self) -> bool:
        return all(f.ok is not False for f in self.figures)

    def print_table(self, out: TextIO) -> None:
        refs = any(f.reference for f in self.figures)
        rows = [("figure", "value", "unit", "target", "", "reference" if refs else "")]
        for f in self.figures:
            status = {True: "ok", False: "MISSED", None: ""}[f.ok]
            rows.append((f.name, fmt_value(f.value), f.unit, f.target or "", status, f.reference))
        w = [max(len(r[i]) for r in rows) for i in range(6)]

        def line(r: tuple[str, str, str, str, str, str]) -> str:
            text = f"{r[0]:<{w[0]}}  {r[1]:>{w[1]}}  {r[2]:<{w[2]}}  {r[3]:<{w[3]}}  {r[4]}"
            if refs:
                text = f"{text:<{sum(w[:5]) + 8}}  {r[5]}"
            return text.rstrip()

        mode = "quick" if self.quick else "full"
        print(f"\n== {self.bench} bench ({mode} run) ==", file=out)
        for k, v in self.meta.items():
            if isinstance(v, dict):
                v = ", ".join(f"{a}={_fmt_any(b)}" for a, b in v.items())
            print(f"  {k}: {v}", file=out)
        width = sum(w) + 8
        print(file=out)
        print(line(rows[0]), file=out)
        i = 1
        for section, figs in self.sections.items():
            print(f"-- {section} ".ljust(width, "-"), file=out)
            for _ in figs:
                print(line(rows[i]), file=out)
                i += 1
        if self.notes:
            print(file=out)
            for n in self.notes:
                print(f"* {n}", file=out)
        missed = [f.name for f in self.figures if f.ok is False]
        print(file=out)
        print("all targets met" if not missed else f"targets MISSED: {', '.join(missed)}", file=out)

    def json_line(self) -> str:
        doc = {
            "bench": self.bench,
            "quick": self.quick,
            "ok": self.ok,
            "meta": self.meta,
            "figures": {f.name: f.as_json() for f in self.figures},
            "notes": self.notes,
        }
        return json.dumps(doc, separators=(",", ":"), default=str)

    def emit(self, out: TextIO = sys.stdout) -> None:
        """The table, then the JSON line as the very last line of ``out``."""
        self.print_table(out)
        out.write(self.json_line() + "\n")
        out.flush()


def finish(report: Report, check: bool) -> int:
    """Print the report; the exit status (1 only with ``--check`` and a missed target)."""
    sys.stderr.flush()
    report.emit()
    return 1 if check and not report.ok else 0
