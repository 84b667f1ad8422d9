"""Medians and same-run ratios of bench-elpv.sh's and bench-cpu.sh's JSON lines, as Markdown tables.

    python3 scripts/reference/summarise_bench.py RESULTS.jsonl

Reads `gcm-inspect bench --json` objects (runtime "gcm-inspect", or
"candle-stock" for `--stock-ops`; fields images_per_second, batch, mode)
and bench_twin.py's (runtime "pytorch-eager"
or "onnxruntime") and `{"epoch_seconds": ...}` lines; groups by runtime, mode
and batch; prints the median over rounds and the ratio of gcm-inspect to each
reference (> 1: gcm-inspect is faster).
"""
import json
import statistics
import sys
from collections import defaultdict


def main():
    speed = defaultdict(list)
    epochs = defaultdict(list)
    versions = {}
    for line in open(sys.argv[1]):
        line = line.strip()
        if not line.startswith("{"):
            continue
        r = json.loads(line)
        if "versions" in r:
            versions.update(r["versions"])
        elif "epoch_seconds" in r:
            epochs[r["runtime"]].append(r["epoch_seconds"])
        elif "images_per_second" in r:
            runtime = r.get("runtime") or ("candle-stock" if r.get("ops") == "candle-stock" else "gcm-inspect")
            speed[(r.get("mode", "infer"), r["batch"], runtime)].append(r["images_per_second"])
    names = {"gcm-inspect": "gcm-inspect", "pytorch-eager": "PyTorch eager",
             "onnxruntime": "ONNX Runtime", "candle-stock": "candle stock"}
    refs = [rt for rt in ("pytorch-eager", "onnxruntime", "candle-stock")
            if rt != "candle-stock" or any(k[2] == rt for k in speed)]
    short = {"pytorch-eager": "PyTorch", "onnxruntime": "ORT", "candle-stock": "candle stock"}
    print("| what | batch | " + " | ".join(names[rt] for rt in ["gcm-inspect"] + refs)
          + " | " + " | ".join(f"vs {short[rt]}" for rt in refs) + " |")
    print("|---|---|" + "---|" * (1 + 2 * len(refs)))
    for mode, batch in sorted({(m, b) for m, b, _ in speed}):
        med = {rt: statistics.median(v) for (m, b, rt), v in speed.items() if (m, b) == (mode, batch)}
        ours = med.get("gcm-inspect")
        cells = [f"{med[rt]:.1f} img/s (n={len(speed[(mode, batch, rt)])})" if rt in med else "-"
                 for rt in ["gcm-inspect"] + refs]
        ratios = [f"{ours / med[rt]:.2f}x" if ours and rt in med else "-" for rt in refs]
        print(f"| {mode} | {batch} | " + " | ".join(cells + ratios) + " |")
    if epochs:
        print()
        print("| training epoch | seconds (median) | runs |")
        print("|---|---|---|")
        for rt, v in sorted(epochs.items()):
            print(f"| {rt} | {statistics.median(v):.1f} | {len(v)} |")
        if "gcm-inspect" in epochs and "pytorch-eager" in epochs:
            ratio = statistics.median(epochs["pytorch-eager"]) / statistics.median(epochs["gcm-inspect"])
            print(f"\nepoch time ratio PyTorch / gcm-inspect: {ratio:.2f}x (> 1: gcm-inspect is faster)")
    if versions:
        print("\nversions: " + ", ".join(f"{k} {v}" for k, v in sorted(versions.items())))


if __name__ == "__main__":
    main()
