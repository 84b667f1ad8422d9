"""Counts ELPV cells whose busbars run left-right (the row profile varies
more than the column profile): is a 90-degree rotation label-and-layout
preserving on this data?

    V=$(scripts/reference/setup-venv.sh)
    $V/bin/python scripts/reference/orientation.py data/elpv/binary.csv

The 20-pixel border is left out (the cell edge is dark on all four sides).
"""
import csv
import os
import sys

import numpy as np
from PIL import Image


def main():
    manifest = sys.argv[1] if len(sys.argv) > 1 else "data/elpv/binary.csv"
    root = os.path.dirname(manifest)
    ratios = []
    with open(manifest) as f:
        for row in csv.DictReader(f):
            a = np.asarray(Image.open(os.path.join(root, row["path"])).convert("L"), np.float32)
            a = a[20:-20, 20:-20]
            ratios.append(np.var(a.mean(axis=1)) / max(np.var(a.mean(axis=0)), 1e-9))
    r = np.array(ratios)
    print(f"{len(r)} cells: {(r > 1).sum()} with left-right busbars, {(r <= 1).sum()} other; "
          f"row/column profile variance ratio median {np.median(r):.1f}, 5th percentile {np.percentile(r, 5):.2f}")


if __name__ == "__main__":
    main()
