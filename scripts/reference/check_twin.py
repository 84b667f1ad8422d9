"""Checks that the PyTorch twin reproduces gcm-inspect's class scores.

    .venv-ref/bin/python scripts/reference/check_twin.py --model MODEL_DIR \
        --data data/elpv/binary.csv --split test [--bin target/release/gcm-inspect]

Runs `gcm-inspect explain --json --resize --out TMP` on the split's images,
feeds the twin the exact input gcm-inspect saw (TMP/<image>/input.png, the
8-bit image after resizing) and compares every class score. Also runs the
twin on its own PIL-resized input (the path train_twin.py trains on) and
reports that gap separately. With --onnx, exports the twin to ONNX and
compares ONNX Runtime's scores too. Prints one JSON object; exits 1 when the
largest score difference exceeds --tol (default 1e-4) or a decision differs.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from gcm_twin import load_grey, load_model, read_manifest  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--data", required=True, help="manifest path,label,split")
    ap.add_argument("--split", default="test")
    ap.add_argument("--bin", default="target/release/gcm-inspect")
    ap.add_argument("--tol", type=float, default=1e-4)
    ap.add_argument("--limit", type=int, help="only the first N images of the split")
    ap.add_argument("--onnx", action="store_true", help="also compare ONNX Runtime")
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)

    card, net = load_model(a.model)
    size = card["model"]["input_rows"]
    rows, _ = read_manifest(a.data)
    rows = [r for r in rows if r.get("split") == a.split]
    if a.limit:
        rows = rows[: a.limit]
    if not rows:
        sys.exit(f"check_twin: no {a.split} rows in {a.data}")
    classes = card["model"]["classes"]

    with tempfile.TemporaryDirectory() as tmp:
        cmd = [a.bin, "explain", "--model", a.model, "--resize", "--json", "--out", tmp,
               *[r["path"] for r in rows]]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        ours = json.loads(out)
        seen = np.stack([load_grey(os.path.join(e["evidence"], "input.png")) for e in ours])
    if [os.path.abspath(e["image"]) for e in ours] != [os.path.abspath(r["path"]) for r in rows]:
        sys.exit("check_twin: explain answered for other images than asked")
    ref = np.array([e["scores"] for e in ours], dtype=np.float64)
    own = np.stack([load_grey(r["path"], size) for r in rows])

    def twin_scores(u8):
        with torch.inference_mode():
            x = torch.from_numpy(u8[:, None]).float() / 255.0
            return torch.cat([net(x[s:s + 64]) for s in range(0, len(x), 64)]).double().numpy()

    same_input = twin_scores(seen)
    own_resize = twin_scores(own)
    labels = np.array([classes.index(r["label"]) for r in rows])
    diff = np.abs(same_input - ref)
    res = {
        "model": a.model,
        "images": len(rows),
        "split": a.split,
        "max_abs_score_diff": float(diff.max()),
        "mean_abs_score_diff": float(diff.mean()),
        "max_abs_score": float(np.abs(ref).max()),
        "decisions_differ": int((same_input.argmax(1) != ref.argmax(1)).sum()),
        "accuracy_gcm_inspect": float((ref.argmax(1) == labels).mean()),
        "accuracy_twin": float((same_input.argmax(1) == labels).mean()),
        "twin_own_resize": {
            "max_abs_score_diff": float(np.abs(own_resize - ref).max()),
            "decisions_differ": int((own_resize.argmax(1) != ref.argmax(1)).sum()),
            "max_grey_level_diff": int(np.abs(own.astype(int) - seen.astype(int)).max()),
        },
        "torch": torch.__version__,
        "tol": a.tol,
    }
    if a.onnx:
        import onnxruntime as ort

        path = os.path.join(tempfile.mkdtemp(), "gcm.onnx")
        export_onnx(net, size, path)
        so = ort.SessionOptions()
        so.intra_op_num_threads = a.threads
        sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
        x = seen[:, None].astype(np.float32) / 255.0
        o = np.concatenate([sess.run(None, {"x": x[s:s + 64]})[0] for s in range(0, len(x), 64)])
        res["onnxruntime"] = {
            "version": ort.__version__,
            "max_abs_score_diff": float(np.abs(o.astype(np.float64) - ref).max()),
            "decisions_differ": int((o.argmax(1) != ref.argmax(1)).sum()),
        }
    print(json.dumps(res, indent=2))
    bad = res["max_abs_score_diff"] > a.tol or res["decisions_differ"] > 0
    if a.onnx:
        bad |= res["onnxruntime"]["max_abs_score_diff"] > a.tol
    sys.exit(1 if bad else 0)


def export_onnx(net, size, path):
    """The twin (eval mode: BatchNorm with running statistics) as ONNX, batch dimension dynamic."""
    net.eval()
    d = net.cfg["input_channels"]
    torch.onnx.export(net, torch.rand(1, d, size, size), path, input_names=["x"],
                      output_names=["scores"], dynamic_axes={"x": {0: "b"}, "scores": {0: "b"}},
                      opset_version=17, dynamo=False)


if __name__ == "__main__":
    main()
