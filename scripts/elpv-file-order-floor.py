#!/usr/bin/env python3
"""What module identity alone reaches on an ELPV split: a classifier that
looks at no pixel, only at the labels of the training cells nearest in file
order (ELPV stores its cells module by module, and defects cluster by module).

    scripts/elpv-file-order-floor.py data/elpv/binary.csv data/elpv/binary-grouped.csv

For each test cell, the label most common among the k training cells nearest
to it in file order (ties: the nearest), for k = 1, 2, 4, 8; beside it the
majority class. Prints a markdown table: accuracy and defect recall per split.
"""
import csv
import sys


def load(path):
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows or not {"path", "label", "split"} <= rows[0].keys():
        sys.exit(f"{path}: not an ELPV manifest (path,label,split,...)")
    return rows


def predict(rows, k):
    train = [i for i, r in enumerate(rows) if r["split"] == "train"]
    out = {}
    for i, r in enumerate(rows):
        if r["split"] != "test":
            continue
        near = sorted(train, key=lambda j: (abs(j - i), j))[:k]
        votes = {}
        for rank, j in enumerate(near):
            votes.setdefault(rows[j]["label"], []).append(rank)
        # Most votes; among equals the one whose nearest voter is nearer.
        out[i] = max(votes.items(), key=lambda kv: (len(kv[1]), -min(kv[1])))[0]
    return out


def score(rows, pred):
    test = [i for i, r in enumerate(rows) if r["split"] == "test"]
    acc = sum(pred[i] == rows[i]["label"] for i in test) / len(test)
    defects = [i for i in test if rows[i]["label"] == "defect"]
    recall = sum(pred[i] == "defect" for i in defects) / len(defects) if defects else float("nan")
    return acc, recall


def main(paths):
    if not paths:
        sys.exit(__doc__)
    print("| split | test cells | majority class | k=1 | k=2 | k=4 | k=8 |")
    print("|---|---|---|---|---|---|---|")
    for path in paths:
        rows = load(path)
        test = [r for r in rows if r["split"] == "test"]
        labels = [r["label"] for r in rows if r["split"] == "train"]
        major = max(set(labels), key=labels.count)
        maj = sum(r["label"] == major for r in test) / len(test)
        cells = []
        for k in (1, 2, 4, 8):
            acc, rec = score(rows, predict(rows, k))
            cells.append(f"{100 * acc:.1f}% (defect recall {100 * rec:.1f}%)")
        print(f"| {path} | {len(test)} | {100 * maj:.1f}% ({major}) | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main(sys.argv[1:])
