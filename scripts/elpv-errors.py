#!/usr/bin/env python3
"""Where an ELPV model errs: errors by defect probability and cell type.

    scripts/elpv-errors.py --model data/models/elpv-binary \
        --data data/elpv/binary.csv [--split test|train|val] [--bin target/release/gcm-inspect]

`--split val` takes the model's own validation images (MODEL/validation.csv,
written by `gcm-inspect train`; the manifest gives their type and
probability), so errors can be broken down without touching the test split.
`--split fit` takes the images the model trained on: the manifest's train
rows less its validation images (how well it fits its own data; MODEL may
be a run's last/ folder, which holds the same validation.csv).
Runs `gcm-inspect explain --json --resize` on the split's images (the same
decisions `gcm-inspect eval --resize` counts) and groups the errors by the
manifest's `probability` and `type` columns (scripts/fetch-elpv.sh writes
both). Prints a table, and with --json one JSON object instead. Standard
library only: no virtual environment needed.
"""
import argparse
import collections
import csv
import json
import os
import subprocess
import sys
import tempfile


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--data", required=True, help="manifest path,label,split,type,probability")
    ap.add_argument("--split", default="test",
                    help="a manifest split; val: MODEL/validation.csv; fit: train rows less those")
    ap.add_argument("--bin", default="target/release/gcm-inspect")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()

    base = os.path.dirname(os.path.abspath(a.data))
    with open(a.data, newline="") as f:
        manifest = list(csv.DictReader(f))
    if a.split in ("val", "fit"):
        val_list = os.path.join(a.model, "validation.csv")
        if not os.path.exists(val_list):
            sys.exit(f"elpv-errors: {val_list} does not exist (written by gcm-inspect train)")
        by_path = {os.path.abspath(os.path.join(base, r["path"])): r for r in manifest}
        with open(val_list, newline="") as f:
            wanted = [os.path.abspath(r["path"]) for r in csv.DictReader(f)]
        unknown = [p for p in wanted if p not in by_path]
        if unknown:
            sys.exit(f"elpv-errors: {len(unknown)} images of {val_list} are not in {a.data}, "
                     f"e.g. {unknown[0]}")
        if a.split == "val":
            rows = [dict(by_path[p], path=p) for p in wanted]
        else:
            held_out = set(wanted)
            rows = [dict(r, path=p) for p, r in by_path.items()
                    if r["split"] == "train" and p not in held_out]
    else:
        rows = [r for r in manifest if r["split"] == a.split]
    if not rows:
        sys.exit(f"elpv-errors: no {a.split} rows in {a.data}")
    missing = [c for c in ("type", "probability") if c not in rows[0]]
    if missing:
        sys.exit(f"elpv-errors: {a.data} has no column {', '.join(missing)} "
                 "(write it with scripts/fetch-elpv.sh)")
    paths = [os.path.join(base, r["path"]) for r in rows]

    with tempfile.TemporaryDirectory() as tmp:
        cmd = [a.bin, "explain", "--model", a.model, "--resize", "--json", "--out", tmp, *paths]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    decisions = json.loads(out)
    if [os.path.abspath(d["image"]) for d in decisions] != [os.path.abspath(p) for p in paths]:
        sys.exit("elpv-errors: explain answered for other images than asked")

    total, wrong = collections.Counter(), collections.Counter()
    for r, d in zip(rows, decisions):
        key = (r["label"], r["probability"], r["type"])
        total[key] += 1
        wrong[key] += d["decision"] != r["label"]
    groups = [
        {"label": k[0], "probability": float(k[1]), "type": k[2],
         "images": total[k], "errors": wrong[k]}
        for k in sorted(total, key=lambda k: (float(k[1]), k[2]))
    ]
    n, e = sum(total.values()), sum(wrong.values())
    if a.json:
        print(json.dumps({"model": a.model, "split": a.split, "images": n,
                          "errors": e, "groups": groups}, indent=1))
        return
    print(f"{a.model} on {a.split}: {e} errors in {n} images ({100 * (n - e) / n:.2f}% right)")
    print(f"{'label':>8} {'prob':>6} {'type':>5} {'images':>7} {'errors':>7} {'error rate':>11}")
    for g in groups:
        rate = 100 * g["errors"] / g["images"]
        print(f"{g['label']:>8} {g['probability']:6.3f} {g['type']:>5} "
              f"{g['images']:7d} {g['errors']:7d} {rate:10.1f}%")


if __name__ == "__main__":
    main()
