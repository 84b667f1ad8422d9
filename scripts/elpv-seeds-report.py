#!/usr/bin/env python3
"""Figures of the ELPV seed series (scripts/elpv-seeds.sh).

    scripts/elpv-seeds-report.py --run RUN --split S --seed N [--train-seconds T] [--results R]
        one run's JSON line, from RUN/{val,test}-{none,flips,d4}/predictions.csv
        (the modes present; none is required); with --results it replaces the
        run's line in R (or is added to it) instead of going to stdout, and a
        run without --train-seconds keeps the figure of its line there
    scripts/elpv-seeds-report.py RESULTS.jsonl [--floor SPLIT=MANIFEST ...]
        mean +- sd over the seeds of each split, without and with --tta: a
        summary table (with --floor, beside each split what file order alone
        reaches on it, scripts/elpv-file-order-floor.py), then every figure

Per run and TTA mode, the accuracy on the run's validation cells and, on
the test split:
  accuracy, defect recall / precision and ok recall at the argmax;
  defect recall and false-reject rate at the threshold on the defect
  probability chosen on the run's validation cells (never on test) as the
  lowest one whose validation false-reject rate is <= 5% (and <= 10%);
  the REVIEW band: the share of cells whose defect probability lies within
  0.5 +- 0.2 (sent to a person) and the accuracy on the rest.
Standard library only.
"""
import argparse
import csv
import fcntl
import json
import math
import os
import sys

FRR_TARGETS = (0.05, 0.10)
TTAS = ("none", "flips", "d4")
BAND = 0.2


def fail(msg):
    sys.exit(f"elpv-seeds-report: {msg}")


def read(path):
    if not os.path.exists(path):
        fail(f"{path} does not exist")
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    need = {"label", "predicted", "reject_score", "defective"}
    if not rows or not need <= set(rows[0]):
        fail(f"{path}: needs the columns {sorted(need)} of eval --sweep's predictions.csv")
    return [
        (r["defective"] == "true", float(r["reject_score"]), r["predicted"] == r["label"])
        for r in rows
    ]


def threshold(val, frr):
    """The lowest defect-probability threshold whose false-reject rate on
    the validation cells is <= frr (rejecting when score >= threshold)."""
    ok = sorted((s for d, s, _ in val if not d), reverse=True)
    allowed = math.floor(frr * len(ok))
    # Rejecting the `allowed` highest-scoring ok cells at most: the threshold
    # sits just above the next one.
    if allowed >= len(ok):
        return 0.0
    return math.nextafter(ok[allowed], math.inf)


def at(rows, t):
    d = [s for dd, s, _ in rows if dd]
    o = [s for dd, s, _ in rows if not dd]
    return {
        "threshold": t,
        "defect_recall": sum(s >= t for s in d) / len(d),
        "false_reject": sum(s >= t for s in o) / len(o),
    }


def one(run, tta):
    val = read(os.path.join(run, f"val-{tta}", "predictions.csv"))
    test = read(os.path.join(run, f"test-{tta}", "predictions.csv"))
    d = [r for r in test if r[0]]
    o = [r for r in test if not r[0]]
    tp = sum(c for _, _, c in d)
    fp = sum(not c for _, _, c in o)
    rest = [r for r in test if abs(r[1] - 0.5) > BAND]
    out = {
        "val_accuracy": sum(c for _, _, c in val) / len(val),
        "test_cells": len(test),
        "accuracy": sum(c for _, _, c in test) / len(test),
        "defect_recall": tp / len(d),
        "defect_precision": tp / (tp + fp) if tp + fp else 0.0,
        "ok_recall": sum(c for _, _, c in o) / len(o),
        "review_share": 1 - len(rest) / len(test),
        "accuracy_outside_review": sum(c for _, _, c in rest) / len(rest) if rest else 0.0,
    }
    for frr in FRR_TARGETS:
        out[f"at_frr_{round(frr * 100)}"] = at(test, threshold(val, frr))
    return out


def stats(xs):
    m = sum(xs) / len(xs)
    sd = math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1)) if len(xs) > 1 else float("nan")
    return m, sd


def pm(xs):
    m, sd = stats([100 * x for x in xs])
    return f"{m:.1f}" if math.isnan(sd) else f"{m:.1f} +- {sd:.1f}"


def floors(specs):
    """{split: (best file-order accuracy over k, majority-class accuracy)}
    from --floor SPLIT=MANIFEST, by scripts/elpv-file-order-floor.py."""
    import importlib.util

    here = os.path.dirname(os.path.abspath(__file__))
    spec = importlib.util.spec_from_file_location("floor", os.path.join(here, "elpv-file-order-floor.py"))
    fl = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(fl)
    out = {}
    for s in specs:
        split, sep, manifest = s.partition("=")
        if not sep or split not in ("random", "grouped"):
            fail(f"--floor {s}: give SPLIT=MANIFEST with SPLIT random or grouped")
        if not os.path.exists(manifest):
            fail(f"--floor {s}: {manifest} does not exist")
        rows = fl.load(manifest)
        test = [r for r in rows if r["split"] == "test"]
        labels = [r["label"] for r in rows if r["split"] == "train"]
        major = max(set(labels), key=labels.count)
        maj = sum(r["label"] == major for r in test) / len(test)
        best = max(fl.score(rows, fl.predict(rows, k))[0] for k in (1, 2, 4, 8))
        out[split] = (best, maj)
    return out


def groups(runs):
    """(split, tta, runs scored with tta, their figures) in table order."""
    for split in ("random", "grouped"):
        rs = sorted((r for r in runs if r["split"] == split), key=lambda r: r["seed"])
        for tta in TTAS:
            with_tta = [r for r in rs if tta in r]
            if with_tta:
                yield split, tta, with_tta, [r[tta] for r in with_tta]


def seeds(rs):
    return ", ".join(str(r["seed"]) for r in rs)


def at_frr(g, frr):
    k = f"at_frr_{frr}"
    return f'{pm([x[k]["defect_recall"] for x in g])} ({pm([x[k]["false_reject"] for x in g])})'


def summary(runs, floor):
    print("| split | file order alone (best k) / majority class | TTA | seeds | accuracy "
          "| defect recall at the argmax | defect recall at <= 5% FR (FR on test) |")
    print("|---|---|---|---|---|---|---|")
    shown = set()
    for split, tta, rs, g in groups(runs):
        first = split not in shown
        shown.add(split)
        f = floor.get(split)
        cells = [
            split if first else "",
            (f"{100 * f[0]:.1f} / {100 * f[1]:.1f}" if f else "-") if first else "",
            tta,
            seeds(rs),
            pm([x["accuracy"] for x in g]),
            pm([x["defect_recall"] for x in g]),
            at_frr(g, 5),
        ]
        print("| " + " | ".join(cells) + " |")
    print()


def report(path, floor_specs=()):
    runs = [json.loads(l) for l in open(path) if l.strip()]
    if not runs:
        fail(f"{path} has no runs")
    summary(runs, floors(floor_specs))
    print("| split | TTA | seeds | accuracy | defect recall (argmax) | defect precision | ok recall "
          "| defect recall at <= 5% FR (FR on test) | at <= 10% FR (FR on test) "
          "| REVIEW share (p in 0.5 +- 0.2) | accuracy outside REVIEW |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for split, tta, rs, g in groups(runs):
        cells = [split, tta, seeds(rs)]
        cells += [pm([x[k] for x in g]) for k in ("accuracy", "defect_recall", "defect_precision", "ok_recall")]
        cells += [at_frr(g, 5), at_frr(g, 10)]
        cells += [pm([x[k] for x in g]) for k in ("review_share", "accuracy_outside_review")]
        print("| " + " | ".join(cells) + " |")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("results", nargs="?")
    ap.add_argument("--run")
    ap.add_argument("--split")
    ap.add_argument("--seed", type=int)
    ap.add_argument("--train-seconds", type=int)
    ap.add_argument("--results", dest="into")
    ap.add_argument("--floor", action="append", default=[])
    a = ap.parse_args()
    if a.run:
        if a.split is None or a.seed is None:
            fail("--run needs --split and --seed")
        same = lambda r: r["split"] == a.split and r["seed"] == a.seed
        line = {"split": a.split, "seed": a.seed, "train_seconds": a.train_seconds}
        for tta in TTAS:
            if tta == "none" or os.path.isdir(os.path.join(a.run, f"test-{tta}")):
                line[tta] = one(a.run, tta)
        if not a.into:
            print(json.dumps(line))
            return
        # Two series side by side (elpv-seeds.sh's advice) finish runs at the
        # same second: the read-modify-write holds an exclusive lock, and the
        # file is rewritten whole and renamed, so no line is lost and a reader
        # never sees half a file.
        with open(a.into + ".lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            old = []
            if os.path.exists(a.into):
                for n, l in enumerate(open(a.into), 1):
                    if not l.strip():
                        continue
                    try:
                        old.append((l, json.loads(l)))
                    except json.JSONDecodeError as e:
                        fail(f"{a.into}:{n}: not a JSON line ({e}); mend or remove it first")
            if line["train_seconds"] is None:
                line["train_seconds"] = next((r["train_seconds"] for _, r in old if same(r)), None)
            keep = [l for l, r in old if not same(r)]
            tmp = f"{a.into}.{os.getpid()}.tmp"
            with open(tmp, "w") as f:
                f.writelines(keep + [json.dumps(line) + "\n"])
            os.replace(tmp, a.into)
    elif a.results:
        report(a.results, a.floor)
    else:
        fail("give RESULTS.jsonl, or --run RUN --split S --seed N")


if __name__ == "__main__":
    main()
