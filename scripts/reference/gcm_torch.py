"""PyTorch eager and ONNX Runtime references for the CPU benchmark.

The GCM of Table 3 (the same network as gcm-inspect's `ModelConfig::table3`):
encoder 16,16,16,16 | 32(s2),32,32 | 64(s2),64,64 (3x3 conv, BN, ReLU), shared
decoder deconv 32, conv 32, deconv 16, conv 16, a 5x5 head per class, and the
GCM score mean(CWM x input). Prints one JSON object per measurement.
"""
import argparse
import json
import os
import statistics
import tempfile
import time

import torch
import torch.nn as nn
import torch.nn.functional as F


def cbr(cin, cout, stride=1):
    return [nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]


def dbr(cin, cout):
    return [nn.ConvTranspose2d(cin, cout, 3, 2, 1, output_padding=1, bias=False),
            nn.BatchNorm2d(cout), nn.ReLU()]


class Gcm(nn.Module):
    def __init__(self, channels=1, classes=2):
        super().__init__()
        enc = cbr(channels, 16) + cbr(16, 16) + cbr(16, 16) + cbr(16, 16)
        enc += cbr(16, 32, 2) + cbr(32, 32) + cbr(32, 32)
        enc += cbr(32, 64, 2) + cbr(64, 64) + cbr(64, 64)
        self.encoder = nn.Sequential(*enc)
        self.decoder = nn.Sequential(*(dbr(64, 32) + cbr(32, 32) + dbr(32, 16) + cbr(16, 16)))
        self.head = nn.Conv2d(16, classes, 5, 1, 2)

    def forward(self, x):
        cwm = self.head(self.decoder(self.encoder(x)))
        s = x.sum(1, keepdim=True)
        return (cwm * s).mean((2, 3)) / x.shape[1]


def timeit(fn, warmup, iters, min_seconds):
    for _ in range(warmup):
        fn()
    times = []
    start = time.perf_counter()
    while len(times) < iters or time.perf_counter() - start < min_seconds:
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return times


def report(runtime, mode, batch, times, threads):
    total = sum(times)
    print(json.dumps({
        "runtime": runtime, "mode": mode, "batch": batch, "threads": threads,
        "images_per_second": batch * len(times) / total,
        "latency_ms_p50": statistics.median(times) * 1e3, "iterations": len(times),
    }), flush=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, required=True)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--batches", default="1,32")
    ap.add_argument("--train-batch", type=int, default=32)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--min-seconds", type=float, default=2.0)
    ap.add_argument("--what", default="torch-infer,torch-train,ort-infer")
    a = ap.parse_args()
    what = a.what.split(",")
    import onnxruntime
    print(json.dumps({"versions": {"torch": torch.__version__, "onnxruntime": onnxruntime.__version__,
                                   "mkldnn": torch.backends.mkldnn.is_available()}}), flush=True)
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    net = Gcm()
    batches = [int(b) for b in a.batches.split(",")]
    if "torch-infer" in what:
        net.eval()
        for b in batches:
            x = torch.rand(b, 1, a.size, a.size)
            with torch.inference_mode():
                t = timeit(lambda: net(x), a.warmup, a.iters, a.min_seconds)
            report("pytorch-eager", "infer", b, t, a.threads)
    if "torch-train" in what:
        net.train()
        opt = torch.optim.SGD(net.parameters(), lr=0.01)
        b = a.train_batch
        x = torch.rand(b, 1, a.size, a.size)
        y = torch.arange(b) % 2

        def step():
            opt.zero_grad(set_to_none=True)
            loss = F.cross_entropy(net(x), y)
            loss.backward()
            opt.step()
            loss.item()

        t = timeit(step, a.warmup, max(3, a.iters // 4), a.min_seconds)
        report("pytorch-eager", "train", b, t, a.threads)
    if "ort-infer" in what:
        import onnxruntime as ort
        net.eval()
        path = os.path.join(tempfile.mkdtemp(), "gcm.onnx")
        torch.onnx.export(net, torch.rand(1, 1, a.size, a.size), path, input_names=["x"],
                          output_names=["scores"], dynamic_axes={"x": {0: "b"}, "scores": {0: "b"}},
                          opset_version=17, dynamo=False)
        so = ort.SessionOptions()
        so.intra_op_num_threads = a.threads
        so.inter_op_num_threads = 1
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
        for b in batches:
            x = torch.rand(b, 1, a.size, a.size).numpy()
            t = timeit(lambda: sess.run(None, {"x": x}), a.warmup, a.iters, a.min_seconds)
            report("onnxruntime", "infer", b, t, a.threads)


if __name__ == "__main__":
    main()
