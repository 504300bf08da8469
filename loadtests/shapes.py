"""Arrival schedules (open loop): when each request is sent and how long its prompt and output are.

A schedule is fixed before the run, so a slow server cannot lower the offered load; the dispatcher
only replays it. Synthetic shapes draw Poisson (or evenly spaced) arrivals from a rate curve; the
trace shape replays recorded timestamps and lengths.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from loadtests.trace import load_trace

SHAPES = ("step", "spike", "sinusoid", "trace")


@dataclass(frozen=True)
class Arrival:
    t: float  # seconds after the run starts
    prompt_tokens: int
    output_tokens: int


@dataclass(frozen=True)
class Phase:
    name: str
    start: float
    end: float


@dataclass
class Schedule:
    shape: str
    duration: float
    arrivals: list[Arrival]
    phases: list[Phase]
    rate_curve: list[tuple[float, float]]  # nominal offered load: (t, requests/s), piecewise
    params: dict = field(default_factory=dict)  # what defined it, for the report


@dataclass
class ShapeOptions:
    """Every knob of every shape; each shape reads the ones it needs."""

    duration: float = 60.0
    arrivals: str = "poisson"  # or "uniform": evenly spaced at the nominal rate
    seed: int = 0
    prompt_tokens: int = 64  # synthetic shapes
    output_tokens: int = 32
    max_prompt_tokens: int | None = None  # clamps (the tiny test model has a short context)
    max_output_tokens: int | None = None
    base_rate: float = 1.0  # spike: the load around the burst
    spike_rate: float = 8.0  # spike: the load during the burst
    spike_start: float | None = None  # default: duration / 3
    spike_length: float | None = None  # default: duration / 3
    step_rates: tuple[float, ...] = (1.0, 2.0, 4.0, 8.0)  # step: equal-length steps
    sine_mean: float = 4.0
    sine_amplitude: float = 3.0
    sine_period: float | None = None  # default: duration / 2
    window: float | None = None  # sinusoid/trace phase length; default: duration / 6
    trace_file: str | None = None  # trace: a path, or a file name in the data directory
    data_dir: str | None = None  # default: $NESTEDFP_DATA_DIR, else <repo>/../shared/data
    trace_start: float = 0.0  # seconds into the trace where replay begins
    time_scale: float = 1.0  # trace: replay time = trace time * time_scale (>1 slows down)
    rate_scale: float = 1.0  # trace: keep this fraction of requests (<=1), timing unchanged


def build_schedule(shape: str, opts: ShapeOptions) -> Schedule:
    """The arrival schedule of ``shape`` under ``opts`` (deterministic for a given seed)."""
    builders: dict[str, Callable[[ShapeOptions], Schedule]] = {
        "step": _step, "spike": _spike, "sinusoid": _sinusoid, "trace": _trace,
    }
    if shape not in builders:
        raise ValueError(f"unknown shape {shape!r}; choose one of {SHAPES}")
    sched = builders[shape](opts)
    return _clamp(sched, opts)


def piecewise_rate(segments: list[tuple[float, float]]) -> Callable[[float], float]:
    """Rate function of a piecewise-constant curve given as (start time, rate) pairs."""
    starts = [s for s, _ in segments]

    def rate(t: float) -> float:
        i = max(0, int(np.searchsorted(starts, t, side="right")) - 1)
        return segments[i][1]

    return rate


def arrival_times(rate: Callable[[float], float], rate_max: float, duration: float,
                  process: str, rng: np.random.Generator) -> list[float]:
    """Arrival times in [0, duration) of a process following ``rate`` (req/s).

    Poisson: thinning of a homogeneous process at ``rate_max`` (exact for any rate <= rate_max).
    Uniform: the next arrival comes 1/rate after the previous one (deterministic, for debugging).
    """
    if rate_max <= 0:
        return []
    times: list[float] = []
    if process == "poisson":
        t = 0.0
        while True:
            t += rng.exponential(1.0 / rate_max)
            if t >= duration:
                return times
            if rng.random() * rate_max < rate(t):
                times.append(t)
    if process == "uniform":
        t, dt_idle = 0.0, 0.01
        while t < duration - 1e-9:  # tolerance: summed 1/rate steps land just short of the end
            r = rate(t)
            if r <= 0:
                t += dt_idle
                continue
            times.append(t)
            t += 1.0 / r
        return times
    raise ValueError(f"unknown arrival process {process!r}; choose poisson or uniform")


def _synthetic(shape: str, opts: ShapeOptions, segments: list[tuple[float, float]],
               phases: list[Phase], params: dict,
               rate: Callable[[float], float] | None = None, rate_max: float | None = None) -> Schedule:
    rng = np.random.default_rng(opts.seed)
    rate = rate or piecewise_rate(segments)
    rate_max = rate_max if rate_max is not None else max(r for _, r in segments)
    times = arrival_times(rate, rate_max, opts.duration, opts.arrivals, rng)
    arrivals = [Arrival(t, opts.prompt_tokens, opts.output_tokens) for t in times]
    params = {"arrivals": opts.arrivals, "seed": opts.seed, "prompt_tokens": opts.prompt_tokens,
              "output_tokens": opts.output_tokens, **params}
    return Schedule(shape, opts.duration, arrivals, phases, segments, params)


def _spike(opts: ShapeOptions) -> Schedule:
    d = opts.duration
    start = d / 3 if opts.spike_start is None else opts.spike_start
    length = d / 3 if opts.spike_length is None else opts.spike_length
    end = min(d, start + length)
    if not 0 <= start < end <= d:
        raise ValueError(f"spike [{start}, {start + length}) must lie inside [0, {d})")
    segments = [(0.0, opts.base_rate), (start, opts.spike_rate), (end, opts.base_rate)]
    phases = [Phase("base-before", 0.0, start), Phase("burst", start, end), Phase("base-after", end, d)]
    phases = [p for p in phases if p.end > p.start]
    params = {"base_rate": opts.base_rate, "spike_rate": opts.spike_rate, "spike_start": start,
              "spike_length": end - start}
    return _synthetic("spike", opts, segments, phases, params)


def _step(opts: ShapeOptions) -> Schedule:
    rates = list(opts.step_rates)
    if not rates:
        raise ValueError("step needs at least one rate")
    width = opts.duration / len(rates)
    segments = [(i * width, r) for i, r in enumerate(rates)]
    phases = [Phase(f"step{i + 1}@{r:g}rps", i * width, (i + 1) * width) for i, r in enumerate(rates)]
    return _synthetic("step", opts, segments, phases, {"step_rates": rates, "step_length": width})


def _windows(duration: float, window: float | None) -> list[Phase]:
    w = window or duration / 6
    n = max(1, math.ceil(duration / w - 1e-9))
    return [Phase(f"w{i + 1}[{i * w:g}-{min(duration, (i + 1) * w):g}s]", i * w, min(duration, (i + 1) * w))
            for i in range(n)]


def _sinusoid(opts: ShapeOptions) -> Schedule:
    period = opts.sine_period or opts.duration / 2
    mean, amp = opts.sine_mean, opts.sine_amplitude

    def rate(t: float) -> float:
        return max(0.0, mean + amp * math.sin(2 * math.pi * t / period))

    step = min(0.5, opts.duration / 200)
    curve = [(float(t), rate(float(t))) for t in np.arange(0.0, opts.duration, step)]
    params = {"sine_mean": mean, "sine_amplitude": amp, "sine_period": period,
              "window": opts.window or opts.duration / 6}
    return _synthetic("sinusoid", opts, curve, _windows(opts.duration, opts.window), params,
                      rate=rate, rate_max=mean + abs(amp))


def _trace(opts: ShapeOptions) -> Schedule:
    if opts.time_scale <= 0:
        raise ValueError("time_scale must be > 0")
    if not 0 < opts.rate_scale <= 1:
        raise ValueError("rate_scale keeps a fraction of requests: 0 < rate_scale <= 1 "
                         "(use time_scale < 1 to raise the rate)")
    trace = load_trace(opts.trace_file, opts.data_dir)
    span = opts.duration / opts.time_scale  # trace seconds that fit into the run
    rng = np.random.default_rng(opts.seed)
    arrivals = []
    for t_raw, ctx, gen in zip(trace.t, trace.context_tokens, trace.generated_tokens):
        if t_raw < opts.trace_start or t_raw >= opts.trace_start + span:
            continue
        if opts.rate_scale < 1 and rng.random() >= opts.rate_scale:
            continue
        arrivals.append(Arrival((t_raw - opts.trace_start) * opts.time_scale, int(ctx), int(gen)))
    bin_s = max(1.0, opts.duration / 100)
    counts = np.bincount([int(a.t // bin_s) for a in arrivals], minlength=math.ceil(opts.duration / bin_s))
    curve = [(i * bin_s, c / bin_s) for i, c in enumerate(counts)]
    params = {"trace_file": str(trace.path), "trace_rows": len(trace.t), "trace_start": opts.trace_start,
              "time_scale": opts.time_scale, "rate_scale": opts.rate_scale, "seed": opts.seed,
              "scaling": _describe_scaling(opts), "window": opts.window or opts.duration / 6}
    return Schedule("trace", opts.duration, arrivals, _windows(opts.duration, opts.window), curve, params)


def _describe_scaling(opts: ShapeOptions) -> str:
    parts = []
    if opts.time_scale != 1:
        parts.append(f"time x{opts.time_scale:g} (rate x{1 / opts.time_scale:g})")
    if opts.rate_scale != 1:
        parts.append(f"rate thinned to {opts.rate_scale:g} of requests (timing kept)")
    return ", ".join(parts) or "none (trace rate and timing as recorded)"


def _clamp(sched: Schedule, opts: ShapeOptions) -> Schedule:
    """Clamp lengths to what the model can take; count the clamped requests for the report."""
    mp = opts.max_prompt_tokens
    mo = opts.max_output_tokens
    n_prompt = n_output = 0
    out = []
    for a in sched.arrivals:
        p, o = max(1, a.prompt_tokens), max(1, a.output_tokens)
        if mp is not None and p > mp:
            p, n_prompt = mp, n_prompt + 1
        if mo is not None and o > mo:
            o, n_output = mo, n_output + 1
        out.append(Arrival(a.t, p, o))
    sched.arrivals = out
    sched.params["clamping"] = {"max_prompt_tokens": mp, "max_output_tokens": mo,
                                "prompts_clamped": n_prompt, "outputs_clamped": n_output}
    return sched
