"""Medians and ratios of the JSON lines written by scripts/bench-cpu.sh."""
import json
import statistics
import sys
from collections import defaultdict

runs = defaultdict(list)
versions = {}
for line in open(sys.argv[1]):
    line = line.strip()
    if not line.startswith("{"):
        continue
    r = json.loads(line)
    if "versions" in r:
        versions = r["versions"]
        continue
    runtime = r.get("runtime") or ("gcm-inspect" if r["ops"] == "engine" else "candle-stock")
    runs[(runtime, r["mode"], r["batch"])].append(r["images_per_second"])

rows = [("infer", 1), ("infer", 32), ("train", 32)]
names = ["gcm-inspect", "candle-stock", "pytorch-eager", "onnxruntime"]
print(f"versions: {json.dumps(versions)}")
print()
print("| workload | " + " | ".join(f"{n} (img/s)" for n in names)
      + " | ours / PyTorch | ours / ORT | ours / candle stock |")
print("|---|" + "---|" * (len(names) + 3))
for mode, b in rows:
    med = {n: statistics.median(runs[(n, mode, b)]) if runs[(n, mode, b)] else None for n in names}
    cells = [f"{med[n]:.1f}" if med[n] else "-" for n in names]
    ours = med["gcm-inspect"]

    def ratio(n):
        return f"{ours / med[n]:.2f}x" if ours and med[n] else "-"

    label = f"{'inference' if mode == 'infer' else 'training step'}, batch {b}"
    print(f"| {label} | " + " | ".join(cells)
          + f" | {ratio('pytorch-eager')} | {ratio('onnxruntime')} | {ratio('candle-stock')} |")
print()
print("samples per cell (rounds): " + ", ".join(
    f"{k[0]}/{k[1]}/b{k[2]}: {len(v)}" for k, v in sorted(runs.items())))
