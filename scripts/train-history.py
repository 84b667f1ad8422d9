#!/usr/bin/env python3
"""Summarise training runs from their history: best and mean validation accuracy.

    scripts/train-history.py RUN [RUN ...] [--range 25-40 ...] [--until N] [--json]

RUN is a model folder written by `gcm-inspect train` (its history.jsonl, one
line per epoch) or a history.jsonl file. For each run: epochs run, the best
validation accuracy and its epoch (the model `train` keeps), the mean
validation accuracy over each --range of epochs (inclusive), and the last
epoch's training accuracy and loss. --until N looks only at epochs 1..N, to
compare a run with one stopped at epoch N. The comparison rules in
docs/elpv.md ("both seeds higher on the best validation accuracy and on the
mean of epochs A-B") are read off this table. Prints a table, and with
--json one JSON list instead. Standard library only.
"""
import argparse
import json
import os
import sys


def fail(msg):
    print(f"train-history.py: {msg}", file=sys.stderr)
    sys.exit(2)


def parse_range(text):
    try:
        a, b = (int(x) for x in text.split("-", 1))
    except ValueError:
        fail(f"--range {text!r}: expected FIRST-LAST epochs, e.g. 25-40")
    if a < 1 or b < a:
        fail(f"--range {text!r}: needs 1 <= FIRST <= LAST")
    return a, b


def load(run):
    path = os.path.join(run, "history.jsonl") if os.path.isdir(run) else run
    if not os.path.isfile(path):
        fail(f"{path}: no such file (expected a model folder written by `gcm-inspect train`, or its history.jsonl)")
    epochs = {}
    with open(path) as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
                epoch = int(rec["epoch"])
            except (ValueError, KeyError, TypeError) as e:
                fail(f"{path}, line {n}: not an epoch record ({e})")
            if "val_accuracy" not in rec:
                fail(f"{path}, line {n}: no val_accuracy (trained without validation images?)")
            # A resumed run may repeat an epoch: the later line is the one its model kept.
            epochs[epoch] = rec
    if not epochs:
        fail(f"{path}: no epochs recorded")
    return path, [epochs[e] for e in sorted(epochs)]


def summarise(run, ranges, until):
    path, hist = load(run)
    if until is not None:
        hist = [r for r in hist if r["epoch"] <= until]
        if not hist:
            fail(f"{path}: no epochs up to --until {until}")
    last = hist[-1]["epoch"]
    # The epoch `train` keeps: highest validation accuracy, ties to the lower
    # validation loss, then to the earlier epoch.
    best = min(hist, key=lambda r: (-r["val_accuracy"], r["val_loss"], r["epoch"]))
    out = {
        "run": run,
        "epochs": last,
        "best_val": 100.0 * best["val_accuracy"],
        "best_epoch": best["epoch"],
        "means": {},
        "last_train_accuracy": 100.0 * hist[-1]["train_accuracy"],
        "last_train_loss": hist[-1]["train_loss"],
    }
    for a, b in ranges:
        sel = [100.0 * r["val_accuracy"] for r in hist if a <= r["epoch"] <= b]
        if len(sel) != b - a + 1:
            fail(f"{path}: --range {a}-{b} needs epochs {a} to {b}, the run has {len(sel)} of them (last epoch {last})")
        out["means"][f"{a}-{b}"] = sum(sel) / len(sel)
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("runs", nargs="+", metavar="RUN")
    ap.add_argument("--range", action="append", default=[], metavar="A-B",
                    help="mean validation accuracy over epochs A to B (repeatable)")
    ap.add_argument("--until", type=int, help="look only at epochs 1..N")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    ranges = [parse_range(r) for r in a.range]
    rows = [summarise(r, ranges, a.until) for r in a.runs]
    if a.json:
        print(json.dumps(rows, indent=1))
        return
    head = ["run", "epochs", "best val (epoch)"]
    head += [f"mean val {x}-{y}" for x, y in ranges]
    head += ["train acc (last)", "train loss (last)"]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for r in rows:
        cells = [r["run"], str(r["epochs"]), f"{r['best_val']:.2f}% ({r['best_epoch']})"]
        cells += [f"{v:.2f}%" for v in r["means"].values()]
        cells += [f"{r['last_train_accuracy']:.1f}%", f"{r['last_train_loss']:.3f}"]
        print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
