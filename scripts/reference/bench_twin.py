"""PyTorch eager and ONNX Runtime timings of a gcm-inspect model directory.

    .venv-ref/bin/python scripts/reference/bench_twin.py --model MODEL_DIR --threads 2

Loads the model into the twin (gcm_twin.py), so PyTorch and ONNX Runtime run
exactly the trained network and input size that `gcm-inspect bench --model`
runs. Times inference at each --batches size (PyTorch eval mode under
inference_mode; ONNX Runtime on the twin's ONNX export, all graph
optimisations) and one training step (forward in train mode, cross-entropy,
backward, SGD with momentum and weight decay). Random input in [0, 1]. Prints
one JSON object per measurement, in the shape of `gcm-inspect bench --json`.
"""
import argparse
import json
import os
import statistics
import sys
import tempfile
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from gcm_twin import load_model  # noqa: E402


def timeit(fn, warmup, iters, min_seconds):
    for _ in range(warmup):
        fn()
    times, start = [], time.perf_counter()
    while len(times) < iters or time.perf_counter() - start < min_seconds:
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return times


def report(runtime, mode, batch, times, threads):
    print(json.dumps({
        "runtime": runtime, "mode": mode, "batch": batch, "threads": threads,
        "images_per_second": batch * len(times) / sum(times),
        "latency_ms_p50": statistics.median(times) * 1e3, "iterations": len(times),
    }), flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--threads", type=int, required=True)
    ap.add_argument("--batches", default="1,32")
    ap.add_argument("--train-batch", type=int, default=32)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--min-seconds", type=float, default=2.0)
    ap.add_argument("--what", default="torch-infer,torch-train,ort-infer")
    a = ap.parse_args()
    what = a.what.split(",")
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    card, net = load_model(a.model)
    m = card["model"]
    shape = (m["input_channels"], m["input_rows"], m["input_cols"])
    batches = [int(b) for b in a.batches.split(",")]
    import onnxruntime as ort
    print(json.dumps({"versions": {"torch": torch.__version__, "onnxruntime": ort.__version__,
                                   "mkldnn": torch.backends.mkldnn.is_available()},
                      "model": a.model, "input": list(shape), "parameters": net.num_parameters()}),
          flush=True)
    if "torch-infer" in what:
        net.eval()
        for b in batches:
            x = torch.rand(b, *shape)
            with torch.inference_mode():
                report("pytorch-eager", "infer", b, timeit(lambda: net(x), a.warmup, a.iters, a.min_seconds),
                       a.threads)
    if "torch-train" in what:
        _, tnet = load_model(a.model)
        tnet.train()
        opt = torch.optim.SGD(tnet.parameters(), lr=1e-3, momentum=0.9, weight_decay=5e-4)
        b = a.train_batch
        x = torch.rand(b, *shape)
        y = torch.arange(b) % len(m["classes"])

        def step():
            opt.zero_grad(set_to_none=True)
            loss = F.cross_entropy(tnet(x), y)
            loss.backward()
            opt.step()
            loss.item()

        report("pytorch-eager", "train", b, timeit(step, a.warmup, max(3, a.iters // 2), a.min_seconds),
               a.threads)
    if "ort-infer" in what:
        from check_twin import export_onnx

        path = os.path.join(tempfile.mkdtemp(), "gcm.onnx")
        export_onnx(net, m["input_rows"], path)
        so = ort.SessionOptions()
        so.intra_op_num_threads = a.threads
        so.inter_op_num_threads = 1
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
        for b in batches:
            x = torch.rand(b, *shape).numpy()
            report("onnxruntime", "infer", b,
                   timeit(lambda: sess.run(None, {"x": x}), a.warmup, a.iters, a.min_seconds), a.threads)


if __name__ == "__main__":
    main()
