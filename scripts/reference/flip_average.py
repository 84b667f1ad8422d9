"""Validation accuracy of trained models with and without flip averaging.

    .venv-ref/bin/python scripts/reference/flip_average.py MODEL_DIR [MODEL_DIR ...]

Loads each gcm-inspect model into the PyTorch twin, reads the images its
training run validated on (MODEL_DIR/validation.csv) and prints the accuracy
of the plain scores, of the scores averaged over the image and its left-right
mirror, and averaged over all four flips. For a GCM, averaging the flipped
back CCMs gives a CCM whose mean is the averaged score, so flip averaging
would keep the evidence exact; this measures whether it would pay.
"""
import csv
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from gcm_twin import load_grey, load_model  # noqa: E402


def main():
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    torch.set_num_threads(1)
    for d in sys.argv[1:]:
        card, net = load_model(d)
        m = card["model"]
        with open(os.path.join(d, "validation.csv"), newline="") as f:
            rows = list(csv.DictReader(f))
        x = np.stack([load_grey(r["path"], m["input_rows"]) for r in rows])[:, None]
        x = torch.tensor(x).float() / 255.0
        y = torch.tensor([m["classes"].index(r["label"]) for r in rows])
        with torch.no_grad():
            plain = net(x)
            mirror = (plain + net(x.flip(3))) / 2
            four = (2 * mirror + net(x.flip(2)) + net(x.flip(2).flip(3))) / 4

        def acc(s):
            return 100.0 * (s.argmax(1) == y).float().mean().item()

        print(f"{d}: images {len(y)}  plain {acc(plain):.2f}%  "
              f"left-right average {acc(mirror):.2f}%  four-flip average {acc(four):.2f}%")


if __name__ == "__main__":
    main()
