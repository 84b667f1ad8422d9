#!/usr/bin/env python3
"""Averaging models: what the mean of several models' scores decides.

    scripts/elpv-average.py --data data/elpv/binary.csv --images RUN/validation.csv \
        MODEL... [--bin target/release/gcm-inspect] [--json]

A MODEL may also be a file with the output of `gcm-inspect explain --json
--resize` on exactly those images, in their order (scores saved earlier).

Scores every MODEL on the images of --images (a `path,label` list, as the
`validation.csv` that `gcm-inspect train` writes), with
`gcm-inspect explain --json --resize` (the decisions `eval --resize` counts),
then for every subset of the models averages the class scores image by
image and takes the largest. The mean of K GCMs' scores is the score of the
GCM whose weight map is the mean of theirs, so an averaged model's evidence
reproduces its decision as a single model's does (docs/elpv.md, tenth round).

Prints each model's accuracy, the mean / lowest / highest accuracy of the
subsets of each size, how many images every model gets wrong and right
(with the manifest's `probability` and `type` of the ones every model gets
wrong), and the share some model gets right. A MODEL that has its own
`validation.csv` must have held out exactly these images (else it trained
on some of them and is refused). Standard library only.
"""
import argparse
import collections
import csv
import itertools
import json
import os
import subprocess
import sys
import tempfile

MAX_MODELS = 12


def fail(msg):
    sys.exit(f"elpv-average: {msg}")


def read_list(path):
    if not os.path.exists(path):
        fail(f"{path} does not exist")
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows or "path" not in rows[0] or "label" not in rows[0]:
        fail(f"{path}: needs a header path,label and at least one row")
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", required=True,
                    help="manifest path,label,split[,type,probability] the images come from")
    ap.add_argument("--images", required=True,
                    help="path,label list to score on (a run's validation.csv)")
    ap.add_argument("models", nargs="+", metavar="MODEL")
    ap.add_argument("--bin", default="target/release/gcm-inspect")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    if len(a.models) > MAX_MODELS:
        fail(f"{len(a.models)} models: at most {MAX_MODELS} (every subset is scored)")

    base = os.path.dirname(os.path.abspath(a.data))
    manifest = {os.path.abspath(os.path.join(base, r["path"])): r for r in read_list(a.data)}
    images = [dict(r, path=os.path.abspath(r["path"])) for r in read_list(a.images)]
    unknown = [r["path"] for r in images if r["path"] not in manifest]
    if unknown:
        fail(f"{len(unknown)} images of {a.images} are not in {a.data}, e.g. {unknown[0]}")
    wanted = sorted(r["path"] for r in images)
    for m in a.models:
        own = os.path.join(m, "validation.csv")
        if os.path.isfile(m) and m.endswith(".json"):
            continue
        if not os.path.exists(os.path.join(m, "model.json")):
            fail(f"{m} is not a model directory (no model.json)")
        if os.path.exists(own) and sorted(os.path.abspath(r["path"]) for r in read_list(own)) != wanted:
            fail(f"{m} held out other images than {a.images} ({own} differs): "
                 "it may have trained on some of them")

    paths = [r["path"] for r in images]
    labels = [r["label"] for r in images]
    scores = []
    classes = None
    for m in a.models:
        if os.path.isfile(m):
            try:
                with open(m) as f:
                    decisions = json.load(f)
            except ValueError as e:
                fail(f"{m}: not explain's JSON output ({e})")
        else:
            with tempfile.TemporaryDirectory() as tmp:
                cmd = [a.bin, "explain", "--model", m, "--resize", "--json", "--out", tmp, *paths]
                run = subprocess.run(cmd, capture_output=True, text=True)
            if run.returncode != 0:
                fail(f"gcm-inspect explain --model {m} failed: {run.stderr.strip()}")
            decisions = json.loads(run.stdout)
        if [os.path.abspath(d["image"]) for d in decisions] != paths:
            fail(f"explain answered for other images than asked (model {m})")
        if classes is None:
            classes = decisions[0]["classes"]
        elif decisions[0]["classes"] != classes:
            fail(f"{m} has classes {decisions[0]['classes']}, {a.models[0]} has {classes}")
        scores.append([d["scores"] for d in decisions])

    n = len(paths)

    def decide(members, i):
        mean = [sum(scores[m][i][k] for m in members) / len(members) for k in range(len(classes))]
        return classes[max(range(len(classes)), key=lambda k: mean[k])]

    def accuracy(members):
        return sum(decide(members, i) == labels[i] for i in range(n)) / n

    singles = [accuracy([m]) for m in range(len(a.models))]
    sizes = []
    for k in range(1, len(a.models) + 1):
        accs = [accuracy(list(c)) for c in itertools.combinations(range(len(a.models)), k)]
        sizes.append({"models": k, "subsets": len(accs), "mean": sum(accs) / len(accs),
                      "min": min(accs), "max": max(accs)})
    wrong_in = [sum(decide([m], i) != labels[i] for m in range(len(a.models))) for i in range(n)]
    always_wrong = [i for i in range(n) if wrong_in[i] == len(a.models)]
    always_right = sum(w == 0 for w in wrong_in)
    groups = collections.Counter(
        (labels[i], manifest[paths[i]].get("probability", ""), manifest[paths[i]].get("type", ""))
        for i in always_wrong)
    result = {
        "images": n,
        "classes": classes,
        "models": [{"model": m, "accuracy": acc} for m, acc in zip(a.models, singles)],
        "subsets": sizes,
        "wrong_in_every_model": len(always_wrong),
        "right_in_every_model": always_right,
        "some_model_right": (n - len(always_wrong)) / n,
        "wrong_in_every_model_by_group": [
            {"label": k[0], "probability": k[1], "type": k[2], "images": v}
            for k, v in sorted(groups.items())],
        "wrong_in_every_model_images": [paths[i] for i in always_wrong],
    }
    if a.json:
        print(json.dumps(result, indent=1))
        return
    print(f"{len(a.models)} models on {n} images of {a.images}")
    for m, acc in zip(a.models, singles):
        print(f"  {100 * acc:6.2f}%  {m}")
    print("scores averaged over every subset of the models:")
    for s in sizes:
        print(f"  {s['models']:2d} models ({s['subsets']:4d} subsets): mean {100 * s['mean']:6.2f}%"
              f"  lowest {100 * s['min']:6.2f}%  highest {100 * s['max']:6.2f}%")
    print(f"wrong in every model: {len(always_wrong)}; right in every model: {always_right}; "
          f"some model right: {100 * result['some_model_right']:.2f}%")
    for g in result["wrong_in_every_model_by_group"]:
        print(f"  {g['images']:4d}  {g['label']} {g['probability']} {g['type']}")


if __name__ == "__main__":
    main()
