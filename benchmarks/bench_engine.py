#!/usr/bin/env python
"""Engine benchmark: per-stage timings, frame rate, band size and peak memory at 1080p, 4K and 8K.

    python benchmarks/bench_engine.py [--sizes 1080p,4k,8k] [--frames N] [--device cpu|cuda|auto]
                                      [--backends torch,spconv] [--out docs/PERFORMANCE.md]

What it does (a script, not a test):

1. writes a seeded random checkpoint in the published format with the fixtures'
   ``make_ckpt.py`` into a temporary folder;
2. for each size, in a fresh subprocess (so that its peak RSS is its own), builds a
   synthetic plate (smooth background, a soft-edged subject with hair-like strands)
   and a coarse prior alpha (the subject's alpha at 1/8 size, blurred) that is handed
   to ``Matter.matte(prior=...)``: random weights make the prior network's own alpha
   meaningless, so the band the refiner works on comes from this prior (the network
   still runs and supplies the context, so its cost is counted);
3. times single-image mode (``state=None``): one warm-up frame, then the median of N
   frames, per stage (prior, masks, refine, compose), in total and as frames per second;
4. times one temporal pair (second frame = first with a small region shifted a few
   pixels) to show what temporal reuse saves;
5. compares sparse backends for the refine stage, interleaved frame by frame in the same
   process so that the ratios are measured under the same conditions: on CPU the
   ``torch`` backend at the default thread count and at one thread against ``spconv``
   at one thread (spconv 2.3.8 is only correct with one thread on CPU); on CUDA
   ``torch`` against ``spconv``;
6. reports peak RSS (``ru_maxrss``) and, on CUDA, ``torch.cuda.max_memory_allocated``;
7. prints Markdown tables and, with ``--out``, writes the performance document.
"""
from __future__ import annotations

import argparse
import datetime
import gc
import json
import math
import os
import platform
import resource
import shlex
import signal
import statistics
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIZES = {"1080p": (1080, 1920), "4k": (2160, 3840), "8k": (4320, 7680)}
LABELS = {"1080p": "1080p (1920x1080)", "4k": "4K UHD (3840x2160)", "8k": "8K UHD (7680x4320)"}
STAGES = ("prior", "masks", "refine", "compose")
CKPT_SEED = 1
# --out rewrites the document above this line and keeps everything from it on (sections that
# other scripts or people add below it survive a refresh).
MARKER = "<!-- bench_engine.py --out regenerates everything above this line and keeps everything below it -->"


# --------------------------------------------------------------------------- synthetic plate

def _soft_ellipse(X, Y, cx, cy, a, b, soft):
    """Alpha of an ellipse with an edge ramp of about ``soft`` (height units), from an
    approximate signed distance (q - 1) / |grad q|."""
    import torch

    dx, dy = X - cx, Y - cy
    q = torch.sqrt((dx / a) ** 2 + (dy / b) ** 2).clamp_min(1e-6)
    grad = torch.sqrt((dx / (a * a)) ** 2 + (dy / (b * b)) ** 2) / q
    dist = (q - 1.0) / grad.clamp_min(1e-6)
    return torch.sigmoid(-dist / soft)


def make_plate(height: int, width: int, seed: int = 0):
    """(frame (H, W, 3) float32 RGB in [0, 1], alpha (H, W) float32, head (cx, cy, ry) in height units).

    Coordinates are in units of the frame height, so the three sizes show the same picture.
    """
    import torch

    g = torch.Generator().manual_seed(seed)
    px = 1.0 / 1080.0  # one 1080p pixel, in height units
    Y = ((torch.arange(height, dtype=torch.float32) + 0.5) / height)[:, None]
    X = ((torch.arange(width, dtype=torch.float32) + 0.5 - width / 2) / height)[None, :]

    # smooth background: gradients, a slow wave and two large soft blobs per channel
    bg = []
    for c, (base, gy, gx) in enumerate(((0.42, 0.18, 0.10), (0.50, 0.10, -0.08), (0.58, -0.15, 0.05))):
        phase = float(torch.rand(1, generator=g)) * 6.283
        ch = base + gy * Y + gx * X + 0.05 * torch.sin(6.283 * (0.7 * X + 0.4 * Y) + phase)
        for bx, by, amp in ((-0.55, 0.3, 0.12), (0.6, 0.75, -0.10)):
            ch = ch + amp * (0.5 + 0.5 * c) * torch.exp(-((X - bx) ** 2 + (Y - by) ** 2) / 0.05)
        bg.append(ch.clamp(0, 1))
    colour = torch.stack(bg, dim=-1)
    del bg

    def over(colour, alpha, rgb):
        return colour + alpha[..., None] * (torch.tensor(rgb, dtype=torch.float32) - colour)

    soft = 0.7 * px
    hx, hy, ra, rb = 0.0, 0.36, 0.12, 0.16
    body = _soft_ellipse(X, Y, 0.0, 1.04, 0.40, 0.44, soft)
    neck = _soft_ellipse(X, Y, 0.0, 0.58, 0.065, 0.13, soft)
    head = _soft_ellipse(X, Y, hx, hy, ra, rb, soft)
    skin = torch.maximum(head, neck)
    del neck

    # hair: strands fanning out from the top of the head, wavy, of random length, width and opacity
    strands = 300
    dx, dy = X - hx, Y - hy
    theta = torch.atan2(dx, -dy)  # 0 straight up
    rho = torch.sqrt((dx / ra) ** 2 + (dy / rb) ** 2)
    r = torch.sqrt(dx * dx + dy * dy)
    del dx, dy
    out = (rho - 0.85).clamp_min(0)
    warped = theta + 0.07 * torch.sin(9.0 * rho + 3.0 * theta) * out + 0.35 * out * torch.sin(theta)
    s = (warped + math.pi) * (strands / (2 * math.pi))
    cell = torch.floor(s)
    frac = (s - cell - 0.5).abs()
    cell = cell.long() % strands
    del s, warped
    half_width = (0.5 + 0.7 * torch.rand(strands, generator=g)) * px
    length = 0.15 + 0.6 * torch.rand(strands, generator=g)
    opacity = (0.55 + 0.45 * torch.rand(strands, generator=g)) * (torch.rand(strands, generator=g) > 0.25)
    dist = frac * (2 * math.pi / strands) * r
    del frac, r
    hair = ((half_width[cell] - dist) / px + 0.5).clamp(0, 1)
    del dist
    hair *= ((0.9 + length[cell] - rho) / 0.08).clamp(0, 1)  # fade towards the tip
    hair *= opacity[cell]
    hair *= ((1.9 - theta.abs()) / 0.25).clamp(0, 1)  # top and sides of the head only
    hair *= rho > 0.85
    del cell, theta, rho, out

    colour = over(colour, skin, (0.86, 0.63, 0.52))
    colour = over(colour, body, (0.16, 0.28, 0.52))
    colour = over(colour, hair, (0.27, 0.17, 0.09))
    alpha = 1.0 - (1.0 - body) * (1.0 - skin) * (1.0 - hair)
    del body, skin, hair
    return colour.clamp_(0, 1).contiguous(), alpha.contiguous(), (hx, hy, rb)


PRIOR_BLUR = 0.75  # the synthetic prior's blur, in pixels of a 1080p plate's 1/8 image (scaled with the height)


def make_prior(alpha, blur: float):
    """The subject's alpha at 1/8 size, Gaussian-blurred (sigma ``blur`` pixels of a 1080p plate's
    1/8 image, scaled with the height so every size gets the same picture): (H/8, W/8)."""
    import torch
    import torch.nn.functional as F

    small = F.avg_pool2d(alpha[None, None], 8, ceil_mode=True)
    sigma = blur * alpha.shape[0] / 1080.0
    radius = max(1, int(math.ceil(3 * sigma)))
    t = torch.arange(-radius, radius + 1, dtype=torch.float32)
    kernel = torch.exp(-0.5 * (t / sigma) ** 2)
    kernel = kernel / kernel.sum()
    small = F.pad(small, (radius, radius, radius, radius), mode="replicate")
    small = F.conv2d(small, kernel.view(1, 1, -1, 1))
    small = F.conv2d(small, kernel.view(1, 1, 1, -1))
    return small[0, 0].clamp(0, 1).contiguous()


def shifted_region(frame, head, shift_px: int):
    """The frame with a small box (12% of the height square, over the right side of the
    head and its hair) moved ``shift_px`` pixels to the right: the second frame of a pair."""
    height, width = frame.shape[:2]
    hx, hy, rb = head
    size = int(0.12 * height)
    cx = int(width / 2 + (hx + 0.16) * height)
    cy = int((hy - 0.06) * height)
    y0, x0 = max(0, cy - size // 2), max(shift_px, cx - size // 2)
    y1, x1 = min(height, y0 + size), min(width, x0 + size)
    second = frame.clone()
    second[y0:y1, x0:x1] = frame[y0:y1, x0 - shift_px:x1 - shift_px]
    return second, (y1 - y0) * (x1 - x0) / float(height * width)


# --------------------------------------------------------------------------- worker (one size)

def _rss_now_mb() -> float:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return float("nan")


def _peak_rss_mb() -> float:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return peak / (1024.0 * 1024.0) if sys.platform == "darwin" else peak / 1024.0


def _busy_seconds() -> float:
    """CPU seconds all processes of the machine have used (from /proc/stat), nan where unknown."""
    try:
        with open("/proc/stat") as f:
            fields = [int(v) for v in f.readline().split()[1:]]
    except (OSError, ValueError):
        return float("nan")
    user, nice, system, idle, iowait, irq, softirq, steal = (fields + [0] * 8)[:8]
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def _own_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _own_sys_seconds() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_stime


def _own_faults() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def wait_quiet(limit_s: float, sample_s: float = 0.5, threshold: float = 0.15) -> float:
    """Wait (up to ``limit_s``) until other processes use less than ``threshold`` cores over a
    ``sample_s`` sample; returns the seconds waited. Shared machines are noisy: a frame timed
    while another process holds a core is slowed far more than that core's share, because
    torch's threads wait for each other."""
    waited = 0.0
    while waited < limit_s:
        busy, own = _busy_seconds(), _own_seconds()
        time.sleep(sample_s)
        if math.isnan(busy):
            break
        if ((_busy_seconds() - busy) - (_own_seconds() - own)) / sample_s < threshold:
            break
        waited += sample_s
    return waited


def _log(msg: str) -> None:
    print(f"  [{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def _median_stats(records: list[dict]) -> dict:
    out = {"ms": {s: statistics.median(r["ms"].get(s, 0.0) for r in records) for s in STAGES},
           "total_ms": statistics.median(r["total_ms"] for r in records),
           "total_ms_all": [r["total_ms"] for r in records],
           "other_load": statistics.mean(r["other_load"] for r in records),
           "sys_share": sum(r["sys_s"] for r in records) / max(1e-9, sum(r["cpu_s"] for r in records)),
           "minor_faults": statistics.median(r["minor_faults"] for r in records),
           "frames": len(records)}
    for key in ("active_fraction", "active_pixels", "spatial_pixels", "temporal_pixels", "mode"):
        out[key] = records[-1][key]
    return out


def worker(cfg: dict) -> dict:
    from sparsemat.engine.allocator import keep_freed_memory

    malloc_tuned = keep_freed_memory() if cfg.get("mallopt") else False
    import torch

    from sparsemat.engine.matting import Matter
    from sparsemat.engine.model import SparseMat
    from sparsemat.engine.model.backends import spconv_available

    device = torch.device(cfg["device"])
    cuda = device.type == "cuda"
    if cfg.get("threads"):
        torch.set_num_threads(cfg["threads"])
    default_threads = torch.get_num_threads()
    height, width = SIZES[cfg["size"]]

    def sync():
        if cuda:
            torch.cuda.synchronize(device)

    result = {"size": cfg["size"], "height": height, "width": width, "device": str(device),
              "busy_limit": cfg["busy_limit"], "malloc_tuned": malloc_tuned,
              "threads": default_threads, "frames_requested": cfg["frames"]}

    model = SparseMat.from_checkpoint(cfg["ckpt"])
    t0 = time.perf_counter()
    frame, alpha_true, head = make_plate(height, width, seed=cfg["seed"])
    prior = make_prior(alpha_true, cfg["prior_blur"])
    del alpha_true
    gc.collect()
    result["plate_s"] = time.perf_counter() - t0
    result["rss_before_mb"] = _rss_now_mb()
    result["peak_rss_plate_mb"] = _peak_rss_mb()
    _log(f"{cfg['size']}: plate built in {result['plate_s']:.1f} s, RSS {result['rss_before_mb']:.0f} MB")

    matter = Matter(model, device, backend="torch", half=cfg["half"])
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)

    def run(m, image, state=None):
        sync()
        if cfg["quiet_wait"] > 0:
            wait_quiet(cfg["quiet_wait"], threshold=cfg["busy_limit"])
        faults = _own_faults()
        busy, own, own_sys, start = _busy_seconds(), _own_seconds(), _own_sys_seconds(), time.perf_counter()
        alpha, new_state, stats = m.matte(image, state, prior=prior)
        sync()
        wall = time.perf_counter() - start
        # cores' worth of CPU that other processes used during the frame (a noisy-machine flag)
        cpu = _own_seconds() - own
        other = max(0.0, (_busy_seconds() - busy) - cpu) / wall
        total = wall * 1000.0
        rec = {"ms": dict(stats.ms), "total_ms": total, "other_load": other, "cpu_s": cpu,
               "sys_s": _own_sys_seconds() - own_sys, "minor_faults": _own_faults() - faults,
               "active_fraction": stats.active_fraction,
               "active_pixels": stats.active_pixels, "spatial_pixels": stats.spatial_pixels,
               "temporal_pixels": stats.temporal_pixels, "mode": stats.mode}
        return rec, new_state, alpha

    discarded = {"count": 0}

    def timed(m, image, state=None):
        """A timed frame; one run while other processes held more than ``--busy-limit`` cores
        is discarded and run again, up to ``--retries`` times (the last one is kept)."""
        for attempt in range(cfg["retries"] + 1):
            rec, new_state, alpha = run(m, image, state)
            if rec["other_load"] <= cfg["busy_limit"] or attempt == cfg["retries"]:
                rec["retried"] = attempt
                return rec, new_state, alpha
            discarded["count"] += 1
            _log(f"  discarded a frame timed while other processes used {rec['other_load']:.2f} cores")
            del alpha

    # ---- single image mode: one warm-up frame, then the median of N
    records = []
    state1 = None
    for i in range(cfg["frames"] + 1):
        rec, state1, alpha = (timed if i else run)(matter, frame)
        del alpha
        tag = "warm-up" if i == 0 else f"frame {i}/{cfg['frames']}"
        _log(f"{cfg['size']} torch x{default_threads}: {tag} {rec['total_ms']:.0f} ms "
             f"(refine {rec['ms'].get('refine', 0):.0f}), active {100 * rec['active_fraction']:.2f}%, "
             f"other load {rec['other_load']:.2f} cores")
        if i > 0:
            records.append(rec)
    result["single"] = _median_stats(records)
    result["peak_rss_mb"] = _peak_rss_mb()
    if cuda:
        result["cuda_max_allocated_mb"] = torch.cuda.max_memory_allocated(device) / 2**20

    # ---- temporal pair: the second frame with the first frame's state
    if cfg["temporal"]:
        second, region = shifted_region(frame, head, max(1, round(3 * height / 1080)))
        pair = []
        for i in range(cfg["frames"] + 1):
            rec, _, alpha = (timed if i else run)(matter, second, state1)
            del alpha
            if i > 0:
                pair.append(rec)
        result["temporal"] = _median_stats(pair)
        result["temporal"]["region_fraction"] = region
        result["temporal"]["reused"] = True
        _log(f"{cfg['size']} temporal second frame: {result['temporal']['total_ms']:.0f} ms, "
             f"active {100 * result['temporal']['active_fraction']:.2f}%")
        del second
        result["peak_rss_temporal_mb"] = _peak_rss_mb()
        if cuda:
            result["cuda_max_allocated_temporal_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
    del state1

    # ---- where the refine time goes (torch backend): one instrumented frame, not in the medians above
    if cfg["breakdown"]:
        result["breakdown"] = refine_breakdown(matter, frame, prior, sync, cfg)
        b = result["breakdown"]
        _log(f"{cfg['size']} breakdown: refine {b['refine_ms']:.0f} ms, inverse convs {b['ms']['up']:.0f} ms "
             f"({100 * b['real_rows']['up']:.0f}% of gathered rows real)")

    # ---- backend comparison, interleaved frame by frame
    if cfg["compare"]:
        configs = []
        want = cfg["backends"]
        if cuda:
            configs = [(b, None) for b in want]
        else:
            if "torch" in want:
                configs += [("torch", None), ("torch", 1)]
            if "spconv" in want:
                configs.append(("spconv", 1))
        notes = []
        if any(b == "spconv" for b, _ in configs) and not spconv_available():
            notes.append("spconv is not installed: skipped")
            configs = [c for c in configs if c[0] != "spconv"]
        matters = {b: (matter if b == "torch" else Matter(model, device, backend=b, half=cfg["half"]))
                   for b, _ in configs}
        per = {c: [] for c in configs}
        failed = {}
        for i in range(cfg["frames"] + 1):
            for c in configs:
                if c in failed:
                    continue
                backend, threads = c
                torch.set_num_threads(threads or default_threads)
                try:
                    rec, _, alpha = (timed if i else run)(matters[backend], frame)
                    del alpha
                except Exception as exc:  # e.g. spconv without CUDA kernels
                    failed[c] = f"{type(exc).__name__}: {exc}"[:200]
                    notes.append(f"{backend} failed: {failed[c]}")
                    continue
                finally:
                    torch.set_num_threads(default_threads)
                _log(f"{cfg['size']} compare {backend} x{threads or default_threads}: "
                     f"{'warm-up' if i == 0 else i} refine {rec['ms']['refine']:.0f} ms, other load {rec['other_load']:.2f}")
                if i > 0:
                    per[c].append(rec)
        rows = []
        for c in configs:
            if c in failed or not per[c]:
                continue
            backend, threads = c
            m = _median_stats(per[c])
            rows.append({"backend": backend, "threads": threads or default_threads,
                         "refine_ms": m["ms"]["refine"], "total_ms": m["total_ms"],
                         "refine_runs": [r["ms"]["refine"] for r in per[c]], "other_load": m["other_load"]})
        result["compare"] = {"rows": rows, "notes": notes}
    result["discarded_frames"] = discarded["count"]
    return result


def refine_breakdown(matter, frame, prior, sync, cfg) -> dict:
    """Time the torch backend's sparse convolutions by kind during one frame, by wrapping the
    plan's ``conv`` and its construction in this process only; the engine is untouched.

    kinds: ``subm`` (submanifold), ``down`` (strided), ``up`` (inverse); ``plan`` is the
    building of the rulebooks (all of them, when the plan is made). ``real_rows``: the share of
    the rows ``gather_conv`` gathers that are real neighbours rather than the zero row."""
    from sparsemat.engine.model import backends

    plan_cls = backends.TorchPlan
    orig_conv, orig_init = plan_cls.conv, plan_cls.__init__
    ms = {"plan": 0.0, "subm": 0.0, "down": 0.0, "up": 0.0}
    rows = {k: [0, 0] for k in ("subm", "down", "up")}
    flops = {k: [0.0, 0.0] for k in ("subm", "down", "up")}

    def init(self, mask, rules):
        sync()
        start = time.perf_counter()
        orig_init(self, mask, rules)
        sync()
        ms["plan"] += (time.perf_counter() - start) * 1000.0

    def gathered_rows(book, n_in) -> tuple[int, int]:
        """(real, gathered) rows of a rulebook: its entries are (k, output rows, input rows)."""
        columns = [entry[-1] for entry in book.entries]
        return sum(int((c < n_in).sum()) for c in columns), sum(c.numel() for c in columns)

    def conv(self, rule, features, weight, bias):
        kind = backends.parse_rule(rule)[0]
        sync()
        start = time.perf_counter()
        out = orig_conv(self, rule, features, weight, bias)
        sync()
        ms[kind] += (time.perf_counter() - start) * 1000.0
        real, gathered = gathered_rows(self.rulebooks[rule], features.shape[0])
        rows[kind][0] += real
        rows[kind][1] += gathered
        per_row = 2.0 * weight.shape[1] * weight.shape[2]
        flops[kind][0] += real * per_row
        flops[kind][1] += gathered * per_row
        return out

    plan_cls.conv = conv
    plan_cls.__init__ = init
    try:
        if cfg["quiet_wait"] > 0:
            wait_quiet(cfg["quiet_wait"], threshold=cfg["busy_limit"])
        _, _, stats = matter.matte(frame, None, prior=prior)
    finally:
        plan_cls.conv = orig_conv
        plan_cls.__init__ = orig_init
    refine = stats.ms["refine"]
    return {"refine_ms": refine, "ms": ms, "other_ms": refine - sum(ms.values()),
            "real_rows": {k: v[0] / max(1, v[1]) for k, v in rows.items()},
            "gflop_done": {k: v[1] / 1e9 for k, v in flops.items()},
            "gflop_real": {k: v[0] / 1e9 for k, v in flops.items()}}


# --------------------------------------------------------------------------- report

def machine_info(device: str, threads: int) -> dict:
    import torch

    cpu = platform.processor() or "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    ram = float("nan")
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    ram = int(line.split()[1]) / 2**20
                    break
    except OSError:
        pass
    info = {"cpu": cpu, "cores": os.cpu_count(), "ram_gib": ram, "torch": torch.__version__,
            "threads": threads, "python": platform.python_version(), "device": device}
    try:
        import spconv

        info["spconv"] = spconv.__version__
    except Exception:
        info["spconv"] = None
    if device.startswith("cuda"):
        info["gpu"] = torch.cuda.get_device_name(0)
        info["cuda"] = torch.version.cuda
    return info


def _span(values, fmt) -> str:
    low, high = fmt(min(values)), fmt(max(values))
    return low if low == high else f"{low}-{high}"


def _f(x, digits=0):
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:,.{digits}f}"


def tables(results: list[dict], info: dict) -> tuple[list[str], str]:
    """(Markdown lines, interpretation paragraph)."""
    cuda = info["device"].startswith("cuda")
    lines = []
    lines += ["### Single image (state=None): median per-stage milliseconds", "",
              "| Plate | Frames | Active band | Prior | Masks | Refine | Compose | Total ms | FPS | Refine share | Mode | Sys CPU | Faults | Other load |",
              "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|"]
    for r in results:
        s = r["single"]
        share = s["ms"]["refine"] / s["total_ms"] if s["total_ms"] else float("nan")
        lines.append(f"| {LABELS[r['size']]} | {s['frames']} | {100 * s['active_fraction']:.2f}% "
                     f"({s['active_pixels'] / 1e6:.2f} MP) | " + " | ".join(_f(s["ms"][k]) for k in STAGES)
                     + f" | {_f(s['total_ms'])} | {1000.0 / s['total_ms']:.2f} | {100 * share:.0f}% | {s['mode']} "
                     f"| {100 * s['sys_share']:.0f}% | {s['minor_faults'] / 1e6:.2f} M | {s['other_load']:.2f} |")
    lines += ["", "Active band: `stats.active_fraction` (and the active pixels in megapixels). Sys CPU: the share "
              "of this process's CPU time spent in the kernel during the timed frames; Faults: minor page faults "
              "per frame (median), in millions.", ""]

    temporal = [r for r in results if "temporal" in r]
    if temporal:
        lines += ["### Temporal pair: second frame with the first frame's state", "",
                  f"The second frame is the first with a square box, 12% of the height on a side "
                  f"({100 * temporal[0]['temporal']['region_fraction']:.2f}% of the frame, over the hair), moved "
                  "3 px to the right (scaled with the height: 6 px at 4K); the first frame's state is passed, so "
                  "the refiner only works where the band meets the changed pixels. Medians of the timed "
                  "second frames (same count as above, after a warm-up).", "",
                  "| Plate | Active (1st -> 2nd) | Changed pixels | Prior | Masks | Refine | Compose | Total ms 1st -> 2nd | Saving | Other load |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for r in temporal:
            s, t = r["single"], r["temporal"]
            changed = t["temporal_pixels"] / float(r["height"] * r["width"])
            lines.append(f"| {LABELS[r['size']]} | {100 * s['active_fraction']:.2f}% -> {100 * t['active_fraction']:.3f}% "
                         f"| {100 * changed:.2f}% | " + " | ".join(_f(t["ms"][k]) for k in STAGES)
                         + f" | {_f(s['total_ms'])} -> {_f(t['total_ms'])} | {100 * (1 - t['total_ms'] / s['total_ms']):.0f}% "
                         f"| {t['other_load']:.2f} |")
        lines.append("")

    broken = [r for r in results if "breakdown" in r]
    if broken:
        lines += ["### Where the refine time goes (torch backend, one instrumented frame)", "",
                  "Milliseconds by convolution kind (gather, matrix product, accumulate), plus the building of "
                  "the neighbour maps; \"rest\" is batch norm, activations, concatenations, the context "
                  "attention, the per-site gathers and the scatter. \"Real rows\" is the share of the rows "
                  "`gather_conv` gathers that are real neighbours rather than the zero row; GFLOP are the "
                  "multiply-adds done x 2 (real / done).", "",
                  "| Plate | Refine | Plan | Submanifold | Strided | Inverse | Rest | Real rows: subm / strided / inverse "
                  "| GFLOP real / done: subm, strided, inverse |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for r in broken:
            b = r["breakdown"]
            rr = b["real_rows"]
            gf = ", ".join(f"{b['gflop_real'][k]:.0f} / {b['gflop_done'][k]:.0f}" for k in ("subm", "down", "up"))
            lines.append(f"| {LABELS[r['size']]} | {_f(b['refine_ms'])} | {_f(b['ms']['plan'])} | {_f(b['ms']['subm'])} "
                         f"| {_f(b['ms']['down'])} | {_f(b['ms']['up'])} | {_f(b['other_ms'])} "
                         f"| {100 * rr['subm']:.0f}% / {100 * rr['down']:.0f}% / {100 * rr['up']:.0f}% | {gf} |")
        lines.append("")

    compared = [r for r in results if r.get("compare", {}).get("rows")]
    notes = sorted({n for r in results for n in r.get("compare", {}).get("notes", [])})
    if compared:
        title = "torch vs spconv on CUDA" if cuda else \
            "torch backend (default threads and 1 thread) vs spconv (1 thread, its only correct setting on CPU)"
        lines += [f"### Refine stage by sparse backend: {title}", "",
                  "Run interleaved frame by frame in one process (warm-up round, then the median of the rounds); "
                  "ratios are to the first row of each plate.", "",
                  "| Plate | Backend | Threads | Refine ms | Ratio | Frame total ms | Other load |",
                  "|---|---|---:|---:|---:|---:|---:|"]
        for r in compared:
            rows = r["compare"]["rows"]
            base = rows[0]["refine_ms"]
            for row in rows:
                lines.append(f"| {LABELS[r['size']]} | {row['backend']} | {row['threads']} | {_f(row['refine_ms'])} "
                             f"| {row['refine_ms'] / base:.2f}x | {_f(row['total_ms'])} | {row['other_load']:.2f} |")
        lines.append("")
    for n in notes:
        lines.append(f"Note: {n}.")
    if notes:
        lines.append("")

    dropped = sum(r.get("discarded_frames", 0) for r in results)
    lines += ["\"Other load\": the CPU (in cores, mean over the timed frames) that other processes on the "
              "machine used while a frame ran, from /proc/stat. Before each frame the benchmark waits for the "
              "machine to be idle; a frame timed while others used more than "
              f"{results[0].get('busy_limit', 0.15):.2f} cores is discarded and rerun "
              f"({dropped} discarded in this run). A figure above that limit means the row is slowed by "
              "sharing the machine.", ""]
    lines += ["### Peak memory (one fresh process per plate)", "",
              "| Plate | RSS before the first frame | Peak RSS, single image | Peak RSS after the temporal pair"
              + (" | CUDA max allocated |" if cuda else " |"),
              "|---|---:|---:|---:" + ("|---:|" if cuda else "|")]
    for r in results:
        row = (f"| {LABELS[r['size']]} | {_f(r['rss_before_mb'] / 1024, 2)} GiB | {_f(r['peak_rss_mb'] / 1024, 2)} GiB "
               f"| {_f(r['peak_rss_temporal_mb'] / 1024, 2) + ' GiB' if 'peak_rss_temporal_mb' in r else '-'} |")
        if cuda:
            row += f" {_f(r.get('cuda_max_allocated_mb', float('nan')) / 1024, 2)} GiB |"
        lines.append(row)
    lines += ["", "RSS before the first frame holds the interpreter, torch, the model and the synthetic plate "
              "(frame, prior); the peak includes building the plate.", ""]

    # interpretation, from the numbers above
    para = []
    singles = list(results)
    shares = [r["single"]["ms"]["refine"] / r["single"]["total_ms"] for r in singles]
    priors = [r["single"]["ms"]["prior"] for r in singles]
    big = singles[-1]
    full = big["single"]["ms"]["masks"] + big["single"]["ms"]["compose"]
    para.append(f"The sparse refine stage is {_span(shares, lambda v: f'{100 * v:.0f}')}% of a frame's time at "
                f"these sizes. The prior network always sees the frame at about 512 x 928, so its cost does not "
                f"follow the plate size ({_span(priors, _f)} ms). Masks and compose are the only "
                f"full-frame passes: {_f(full)} ms together at {big['size']} "
                f"({100 * full / big['single']['total_ms']:.0f}% of its frame).")
    if len(singles) >= 2:
        a, b = singles[0], singles[-1]
        px = (b["height"] * b["width"]) / float(a["height"] * a["width"])
        act = b["single"]["active_pixels"] / float(a["single"]["active_pixels"])
        ref = b["single"]["ms"]["refine"] / a["single"]["ms"]["refine"]
        per_mp = ", ".join(f"{r['single']['ms']['refine'] / 1000 / (r['single']['active_pixels'] / 1e6):.1f} s "
                           f"({r['size']})" for r in singles)
        para.append(f"From {a['size']} to {b['size']} the frame grows {px:.0f}x, the active band "
                    f"{act:.1f}x and the refine time {ref:.1f}x: the cost follows the band, not the frame "
                    f"(refine time per active megapixel: {per_mp}). The band is the prior's uncertain edge "
                    "dilated by a fixed 15 px, so on the same picture it is a smaller share of a larger frame "
                    f"({100 * a['single']['active_fraction']:.1f}% at {a['size']}, "
                    f"{100 * b['single']['active_fraction']:.1f}% at {b['size']}).")
    if temporal:
        savings = ", ".join(f"{100 * (1 - r['temporal']['total_ms'] / r['single']['total_ms']):.0f}% at {r['size']}"
                            for r in temporal)
        t = temporal[-1]["temporal"]
        floor = t["ms"]["prior"] + t["ms"]["masks"] + t["ms"]["compose"]
        para.append(f"With temporal reuse, a frame whose change is local only refines where the change meets the "
                    f"band (saving {savings} here). The prior network, the masks (three dilations and a box sum "
                    f"at full size on this path) and compose still run on every frame and become the floor: "
                    f"{_f(floor)} of {_f(t['total_ms'])} ms at {temporal[-1]['size']}.")
    if broken:
        rb = broken[-1]
        b = rb["breakdown"]
        kinds = sorted(("subm", "down", "up"), key=lambda k: -b["ms"][k])
        names = {"subm": "submanifold", "down": "strided", "up": "inverse (transposed)"}
        para.append(f"Inside the torch backend's refine at {rb['size']}, the {names[kinds[0]]} convolutions take "
                    f"{100 * b['ms'][kinds[0]] / b['refine_ms']:.0f}% of the time and the "
                    f"{names[kinds[1]]} ones {100 * b['ms'][kinds[1]] / b['refine_ms']:.0f}%; building the "
                    f"rulebooks takes {100 * b['ms']['plan'] / b['refine_ms']:.0f}%.")
        para.append(f"The inverse convolutions gather only real rows ({100 * b['real_rows']['up']:.0f}%): "
                    "a stride-2 transpose has 1, 2 or 4 real taps per output by the parity of the pixel, "
                    "and the rulebook keeps only those.")
    if compared and not cuda:
        bits = []
        faster = []
        for r in compared:
            rows = {(x["backend"], x["threads"]): x["refine_ms"] for x in r["compare"]["rows"]}
            t1, sp, tn = rows.get(("torch", 1)), rows.get(("spconv", 1)), rows.get(("torch", r["threads"]))
            if sp and t1 and tn:
                bits.append(f"{sp / t1:.2f}x torch's time on 1 thread and {sp / tn:.2f}x on {r['threads']} "
                            f"threads at {r['size']}")
                faster.append(sp < min(t1, tn))
            elif t1 and tn:
                bits.append(f"torch on 1 thread takes {t1 / tn:.2f}x its time on {r['threads']} at {r['size']}")
        if bits and faster:
            verdict = ("so on this machine spconv on its single safe thread is the faster CPU backend"
                       if all(faster) else "so the torch backend is the faster CPU backend here"
                       if not any(faster) else "so neither backend wins at every size")
            para.append("For the refine stage, spconv on one thread (its only correct setting on CPU) takes "
                        + "; ".join(bits) + f": {verdict}.")
        elif bits:
            para.append("For the refine stage, " + "; ".join(bits) + ".")
    r8 = next((r for r in results if r["size"] == "8k"), None)
    if r8 is not None:
        para.append(f"The 8K frame peaked at {r8['peak_rss_mb'] / 1024:.1f} GiB RSS "
                    f"({'within' if r8['peak_rss_mb'] < 24 * 1024 else 'OVER'} a 24 GiB machine); "
                    f"{100 * r8['single']['sys_share']:.0f}% of its CPU time went to the kernel "
                    f"({r8['single']['minor_faults'] / 1e6:.1f} M minor page faults a frame: memory freshly "
                    "allocated and touched for every large temporary).")
    para.append("Weights are random (the real checkpoint cannot be downloaded here), so the network's own prior "
                "is meaningless and a synthetic prior sets the band; the work per active pixel is the same as "
                "with trained weights, but the band of a real shot depends on its subject and on the real prior.")
    return lines, " ".join(para)


def kept_tail(path: str) -> str:
    """What ``--out`` keeps of an existing document: the marker line and everything after it; for a
    document written before the marker existed, whatever follows the generated interpretation."""
    if not os.path.isfile(path):
        return MARKER + "\n"
    with open(path) as f:
        text = f.read()
    if MARKER in text:
        return text[text.index(MARKER):]
    heading = "## What the figures mean\n"
    if heading in text:
        rest = text[text.index(heading) + len(heading):].lstrip("\n")
        cut = rest.find("\n\n")  # the generated paragraph is one line
        rest = rest[cut:].strip("\n") if cut >= 0 else ""
        return MARKER + ("\n\n" + rest + "\n" if rest else "\n")
    # not a document this script wrote: keep all of it below the new figures
    return MARKER + "\n\n" + text


def write_doc(path: str, info: dict, command: str, lines: list[str], paragraph: str, args) -> None:
    date = datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    machine = (f"- CPU: {info['cpu']}, {info['cores']} logical cores; RAM {info['ram_gib']:.1f} GiB\n"
               f"- Python {info['python']}, torch {info['torch']}, spconv {info['spconv'] or 'not installed'}; "
               f"torch threads (default): {info['threads']}\n")
    if info["device"].startswith("cuda"):
        machine += f"- GPU: {info['gpu']} (CUDA {info['cuda']})\n"
    machine += f"- Device benchmarked: {info['device']}\n"
    body = f"""# Performance

Measured by `benchmarks/bench_engine.py` on {date}. Rerun it with `--out` to refresh the part
of this file above the marker line (what follows the marker is kept); every number above it
comes from that run on the machine described, nothing is extrapolated.

## Machine

{machine}
## Command

```
{command}
```

## Method

- Random weights in the published checkpoint format (`make_ckpt.py {CKPT_SEED}`): the real
  checkpoint cannot be downloaded here, so the prior network's own alpha is meaningless. A
  synthetic plate (smooth background, a soft-edged head-and-shoulders subject with hair-like
  strands) is matted with a synthetic coarse prior passed as `prior=`: the subject's alpha at
  1/8 size, Gaussian-blurred (sigma {args.prior_blur} px at 1/8 of 1080p, scaled with the height). The
  prior network still runs on every frame (it supplies the context), so its cost is counted.
- Active band: `stats.active_fraction`, the pixels the sparse refiner computes (the prior's
  uncertain band dilated 15 x 15), as measured.
- Timings: per stage from `stats.ms` (prior, masks, refine, compose); "Total" is the wall time
  of the `matte()` call (it also includes normalizing the frame). One warm-up frame, then the
  median of the timed frames (the "Frames" column). FPS = 1000 / total.
- Allocator: {"glibc malloc told to keep large freed blocks (`--mallopt`: M_MMAP_MAX=0, M_TRIM_THRESHOLD=2^31-1), as `sparsemat matte` and the engine set it" if args.mallopt else "glibc's default: the benchmark calls Matter directly, and `sparsemat matte` and the engine keep freed blocks instead (`--mallopt`)"}.
- Memory: each plate runs in a fresh process; peak RSS is `ru_maxrss`{", CUDA figure is `torch.cuda.max_memory_allocated`" if info["device"].startswith("cuda") else ""}.
- Backend comparison: the configurations run one after another for each frame in the same
  process, so that their ratios see the same machine state.

## Results

""" + "\n".join(lines) + f"""
## What the figures mean

{paragraph}

"""
    body += kept_tail(path)
    from sparsemat.plugin.files import replacing

    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with replacing(path) as temporary, open(temporary, "w") as handle:
        handle.write(body)


# --------------------------------------------------------------------------- main

def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "--worker":
        result = worker(json.loads(argv[1]))
        print("RESULT " + json.dumps(result), flush=True)
        return 0

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="1080p,4k,8k", help="comma-separated: 1080p, 4k, 8k")
    p.add_argument("--frames", type=int, default=3, help="timed frames after one warm-up (median)")
    p.add_argument("--frames-8k", type=int, default=None,
                   help="timed frames at 8K (default: 1 on CPU, --frames on CUDA)")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--backends", default="torch,spconv", help="backends to compare: torch, spconv")
    p.add_argument("--compare-sizes", default="1080p,4k",
                   help="sizes for the backend comparison ('' for none)")
    p.add_argument("--temporal-sizes", default="1080p,4k", help="sizes for the temporal pair ('' for none)")
    p.add_argument("--breakdown-sizes", default="1080p,4k",
                   help="sizes for the refine breakdown by convolution kind, torch backend ('' for none)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's default)")
    p.add_argument("--half", action="store_true", help="run the model in float16 (CUDA)")
    p.add_argument("--prior-blur", type=float, default=PRIOR_BLUR,
                   help="sigma of the synthetic prior's blur, in pixels at 1/8 of a 1080p plate")
    p.add_argument("--seed", type=int, default=0, help="seed of the synthetic plate")
    p.add_argument("--busy-limit", type=float, default=0.15,
                   help="discard and rerun a timed frame during which other processes used more than this "
                        "many cores")
    p.add_argument("--retries", type=int, default=3, help="reruns of a frame discarded for --busy-limit")
    p.add_argument("--quiet-wait", type=float, default=120.0,
                   help="before each frame, wait up to this many seconds for other processes to leave "
                        "the CPU idle (0: don't wait)")
    p.add_argument("--mallopt", action="store_true",
                   help="in the workers, keep large freed blocks as sparsemat matte and the engine do (mallopt M_MMAP_MAX=0, "
                        "M_TRIM_THRESHOLD=2^31-1): shows what page faults on fresh allocations cost")
    p.add_argument("--fixtures", default=os.path.join(REPO, "..", "shared", "fixtures", "official"),
                   help="folder holding make_ckpt.py")
    p.add_argument("--out", default=None, help="write the Markdown report here (e.g. docs/PERFORMANCE.md)")
    p.add_argument("--json", default=None, help="also write the raw results as JSON")
    args = p.parse_args(argv)

    import torch

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # clean up the worker and the temp folder
    sizes = [s.strip().lower() for s in args.sizes.split(",") if s.strip()]
    for s in sizes:
        if s not in SIZES:
            p.error(f"unknown size {s!r}; choose from {', '.join(SIZES)}")
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: torch sees no CUDA device")
    threads = args.threads or torch.get_num_threads()
    info = machine_info(device, threads)
    compare_sizes = {s.strip().lower() for s in args.compare_sizes.split(",") if s.strip()}
    temporal_sizes = {s.strip().lower() for s in args.temporal_sizes.split(",") if s.strip()}
    breakdown_sizes = {s.strip().lower() for s in args.breakdown_sizes.split(",") if s.strip()}
    command = "python benchmarks/bench_engine.py " + shlex.join(argv)

    print(f"# SparseMat engine benchmark: {device}, {info['cpu']}, {info['cores']} cores, torch {info['torch']}, "
          f"{threads} threads", file=sys.stderr)
    print("# random weights: the network's own prior is meaningless, so a synthetic prior "
          "(the subject's alpha at 1/8, blurred) is passed as prior=", file=sys.stderr)

    make_ckpt = os.path.join(os.path.abspath(args.fixtures), "make_ckpt.py")
    if not os.path.isfile(make_ckpt):
        p.error(f"no make_ckpt.py in {args.fixtures} (use --fixtures)")
    results = []
    with tempfile.TemporaryDirectory(prefix="sparsemat-bench-") as tmp:
        ckpt = os.path.join(tmp, "random.pth")
        subprocess.run([sys.executable, make_ckpt, str(CKPT_SEED), ckpt], check=True)
        for size in sizes:
            frames = args.frames
            if size == "8k":
                frames = args.frames_8k if args.frames_8k is not None else (1 if device == "cpu" else args.frames)
            cfg = {"size": size, "frames": max(1, frames), "device": device, "ckpt": ckpt, "threads": args.threads,
                   "half": args.half, "prior_blur": args.prior_blur, "quiet_wait": args.quiet_wait, "mallopt": args.mallopt,
                   "busy_limit": args.busy_limit, "retries": args.retries, "seed": args.seed, "backends": backends,
                   "compare": size in compare_sizes and bool(backends), "temporal": size in temporal_sizes,
                   "breakdown": size in breakdown_sizes}
            print(f"# {LABELS[size]}: fresh process", file=sys.stderr, flush=True)
            start = time.perf_counter()
            proc = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--worker", json.dumps(cfg)],
                                    stdout=subprocess.PIPE, text=True, cwd=REPO)
            try:
                stdout, _ = proc.communicate()
            finally:  # interrupted: don't leave the worker running
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
            line = next((l for l in stdout.splitlines()[::-1] if l.startswith("RESULT ")), None)
            if proc.returncode != 0 or line is None:
                print(f"# {size}: worker failed (exit {proc.returncode}); skipped", file=sys.stderr)
                continue
            result = json.loads(line[len("RESULT "):])
            result["wall_s"] = time.perf_counter() - start
            results.append(result)
            print(f"# {size}: done in {result['wall_s']:.0f} s", file=sys.stderr, flush=True)

    if not results:
        print("no results", file=sys.stderr)
        return 1
    lines, paragraph = tables(results, info)
    print("\n".join(lines))
    print(paragraph)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": info, "command": command, "results": results}, f, indent=1)
    if args.out:
        write_doc(args.out, info, command, lines, paragraph, args)
        print(f"\nwrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
