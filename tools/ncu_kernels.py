#!/usr/bin/env python3
"""Per-kernel table of an `ncu --csv --print-units base` capture (branch ewise, issue #8).

Usage: ncu_kernels.py CAPTURE.csv [copy GB/s, default 3000] [--seq SEQ.txt]

Expects the metrics gpu__time_duration.sum, dram__bytes_read.sum and dram__bytes_write.sum
(e.g. `XD_BENCH_CUPROF=1 ncu --profile-from-start off --clock-control none --cache-control none
--print-units base --csv --metrics gpu__time_duration.sum,dram__bytes_read.sum,dram__bytes_write.sum
bench_gpu_train 4096 1`). Prints, per kernel name (launches aggregated), the launches, total time,
DRAM bytes, achieved GB/s and the time those bytes need at the copy rate ("bound"); sorted by
time, with the sum of every kernel's time (the step without launch gaps). --seq writes every
launch in order (id, name, us, MB) for mapping kernels to the ops that launched them."""
import csv
import sys
from collections import OrderedDict, defaultdict


def num(v):
    v = v.replace(",", "").strip()
    try:
        return float(v)
    except ValueError:
        return 0.0


def main():
    args = [a for a in sys.argv[1:]]
    seq_path = None
    if "--seq" in args:
        i = args.index("--seq")
        seq_path = args[i + 1]
        del args[i:i + 2]
    path = args[0]
    rate = float(args[1]) if len(args) > 1 else 3000.0
    with open(path, newline="") as f:
        lines = [l for l in f if l.startswith('"')]  # drop ncu's ==PROF== lines
    rows = csv.DictReader(lines)
    launches = OrderedDict()
    for r in rows:
        k = r.get("ID")
        if k is None:
            continue
        d = launches.setdefault(k, {"name": r.get("Kernel Name", "?"), "t": 0.0, "rd": 0.0, "wr": 0.0})
        m, v = r.get("Metric Name", ""), num(r.get("Metric Value", "0"))
        if m.startswith("gpu__time_duration"):
            d["t"] = v  # ns
        elif m.startswith("dram__bytes_read"):
            d["rd"] = v
        elif m.startswith("dram__bytes_write"):
            d["wr"] = v
    agg = defaultdict(lambda: [0, 0.0, 0.0])
    for d in launches.values():
        a = agg[d["name"]]
        a[0] += 1
        a[1] += d["t"]
        a[2] += d["rd"] + d["wr"]
    tot_t = sum(a[1] for a in agg.values())
    tot_b = sum(a[2] for a in agg.values())
    print(f"{len(launches)} launches, {len(agg)} kernels; kernel time {tot_t / 1e6:.2f} ms, DRAM {tot_b / 1e9:.2f} GB "
          f"(bound at {rate:.0f} GB/s: {tot_b / rate / 1e6:.2f} ms)")
    print(f"{'kernel':70s} {'n':>5s} {'ms':>8s} {'%':>5s} {'MB':>9s} {'GB/s':>6s} {'bound ms':>8s} {'x bound':>7s}")
    for name, (n, t, b) in sorted(agg.items(), key=lambda kv: -kv[1][1]):
        bound = b / rate / 1e6
        print(f"{name[:70]:70s} {n:5d} {t / 1e6:8.3f} {100 * t / tot_t:5.1f} {b / 1e6:9.1f} {b / t if t else 0:6.0f} "
              f"{bound:8.3f} {t / 1e6 / bound if bound else 0:7.1f}")
    if seq_path:
        with open(seq_path, "w") as f:
            for k, d in launches.items():
                f.write(f"{k}\t{d['name'][:90]}\t{d['t'] / 1e3:.1f}\t{(d['rd'] + d['wr']) / 1e6:.2f}\n")


if __name__ == "__main__":
    main()
