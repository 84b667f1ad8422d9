#!/usr/bin/env python3
"""The GCM network of a gcm-inspect model directory, in PyTorch: a reference
for speed (and a cross-check of the results) on the same GPU.

    python3 scripts/reference/gcm_torch_gpu.py --model DIR/model \
        --input DIR/input.safetensors --scores DIR/scores.safetensors \
        --out DIR/torch.json

Builds the network from model.json (the architecture config stored with the
weights: encoder widths and depths, decoder convolutions per stage, head
kernel, shared decoder, clipped head, input scaling), loads
model.safetensors (PyTorch layouts: Conv2d [out, in, k, k], ConvTranspose2d
[in, out, k, k], BatchNorm weight/bias/running_mean/running_var), folds
BatchNorm into the convolutions exactly as gcm-inspect does for inference,
and computes the class scores as the mean of CWM x scaled input.

It then checks its scores against the ones gcm-inspect wrote for the same
inputs, and times batch-1 latency (scores copied to the host) and batch-64
throughput in float32 with TF32 off (gcm-inspect computes in full float32),
eager mode with cudnn.benchmark on.
"""

import argparse
import json
import statistics
import time

import torch
import torch.nn.functional as F
from safetensors.torch import load_file


def fold(weights, prefix, deconv, eps):
    w = weights[prefix + (".deconv.weight" if deconv else ".conv.weight")]
    g = weights[prefix + ".bn.weight"]
    b = weights[prefix + ".bn.bias"]
    m = weights[prefix + ".bn.running_mean"]
    v = weights[prefix + ".bn.running_var"]
    s = g / torch.sqrt(v + eps)
    if deconv:
        w = w * s.reshape(1, -1, 1, 1)
    else:
        w = w * s.reshape(-1, 1, 1, 1)
    return w.contiguous(), (b - m * s).contiguous()


class FoldedGcm(torch.nn.Module):
    def __init__(self, card, weights, device):
        super().__init__()
        cfg = card["model"]
        eps = cfg.get("bn_eps", 1e-5)
        widths = cfg.get("encoder_widths", [16, 32, 64])
        depths = cfg.get("encoder_depths", [4, 3, 3])
        per_stage = cfg.get("decoder_convs_per_stage", 1)
        self.k = cfg.get("head_kernel", 5)
        self.clipped = cfg.get("clipped", False)
        n = len(cfg["classes"])
        d = cfg["input_channels"]
        to = lambda t: t.to(device=device, dtype=torch.float32)
        weights = {k: to(v) for k, v in weights.items()}

        # Encoder: the first convolution of every stage after the first has stride 2.
        self.encoder = []
        i = 0
        for stage, depth in enumerate(depths):
            for j in range(depth):
                stride = 2 if stage > 0 and j == 0 else 1
                self.encoder.append((fold(weights, f"encoder.{i}", False, eps), stride))
                i += 1

        def decoder(prefix):
            layers = []
            i = 0
            for _stage in reversed(range(len(widths) - 1)):
                layers.append((fold(weights, f"{prefix}.{i}", True, eps), "deconv"))
                i += 1
                for _ in range(per_stage):
                    layers.append((fold(weights, f"{prefix}.{i}", False, eps), "conv"))
                    i += 1
            return layers

        if cfg.get("shared_decoder", True):
            self.decoders = [decoder("decoder")]
        else:
            self.decoders = [decoder(f"decoders.{j}") for j in range(n)]
        self.head_w = weights["head.weight"]
        self.head_b = weights["head.bias"]

        kind = cfg.get("scaling", {"kind": "raw"})
        if kind["kind"] == "raw":
            a, b = [1.0] * d, [0.0] * d
        elif kind["kind"] == "inverted":
            a, b = [-1.0] * d, [1.0] * d
        else:
            a, b = [1.0] * d, [-m for m in kind["mean"]]
        self.scale_a = torch.tensor(a, device=device).reshape(1, d, 1, 1)
        self.scale_b = torch.tensor(b, device=device).reshape(1, d, 1, 1)

    def forward(self, x):
        scaled = x * self.scale_a + self.scale_b
        h = scaled
        for (w, b), stride in self.encoder:
            h = F.relu(F.conv2d(h, w, b, stride=stride, padding=w.shape[-1] // 2))
        maps = []
        for j, dec in enumerate(self.decoders):
            t = h
            for (w, b), op in dec:
                pad = w.shape[-1] // 2
                if op == "deconv":
                    t = F.relu(F.conv_transpose2d(t, w, b, stride=2, padding=pad, output_padding=1))
                else:
                    t = F.relu(F.conv2d(t, w, b, padding=pad))
            if len(self.decoders) == 1:
                maps.append(F.conv2d(t, self.head_w, self.head_b, padding=self.k // 2))
            else:
                maps.append(
                    F.conv2d(t, self.head_w[j : j + 1], self.head_b[j : j + 1], padding=self.k // 2)
                )
        cwm = torch.cat(maps, 1)
        if self.clipped:
            cwm = F.relu(cwm)
        d = scaled.shape[1]
        s = scaled.sum(1, keepdim=True)
        scores = (cwm * s).sum((2, 3)) / (cwm.shape[2] * cwm.shape[3] * d)
        return cwm, scores


def timed(fn, reps, sync):
    for _ in range(3):
        fn()
    sync()
    t = time.perf_counter()
    fn()
    sync()
    one = max(time.perf_counter() - t, 1e-7)
    inner = max(1, min(2000, int(0.02 / one) + 1))
    per = []
    for _ in range(reps):
        t = time.perf_counter()
        for _ in range(inner):
            fn()
        sync()
        per.append((time.perf_counter() - t) / inner)
    return statistics.median(per), min(per)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--input", required=True)
    ap.add_argument("--scores", required=True)
    ap.add_argument("--out", required=True)
    a = ap.parse_args()

    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cudnn.benchmark = True
    dev = torch.device("cuda:0")
    card = json.load(open(f"{a.model}/model.json"))
    net = FoldedGcm(card, load_file(f"{a.model}/model.safetensors"), dev)
    x64 = load_file(a.input)["x"].to(dev)
    ours = load_file(a.scores)["scores"].to(dev)

    with torch.inference_mode():
        _, theirs = net(x64)
        err = ((theirs - ours).abs().max() / ours.abs().max().clamp_min(1e-30)).item()
        same = (theirs.argmax(1) == ours.argmax(1)).float().mean().item()
        x1 = x64[:1].contiguous()
        sync = torch.cuda.synchronize
        lat, lat_min = timed(lambda: net(x1)[1].cpu(), 21, sync)
        thr, _ = timed(lambda: net(x64), 9, sync)

    report = {
        "torch": torch.__version__,
        "gpu": torch.cuda.get_device_name(0),
        "mode": "eager, float32, TF32 off, cudnn.benchmark",
        "max_rel_score_diff_vs_gcm_inspect": err,
        "same_decision_fraction": same,
        "batch1_latency_ms": lat * 1e3,
        "batch1_latency_min_ms": lat_min * 1e3,
        "batch64_ms": thr * 1e3,
        "batch64_images_per_s": 64 / thr,
    }
    json.dump(report, open(a.out, "w"), indent=2)
    print(json.dumps(report, indent=2))
    if err > 1e-3:
        raise SystemExit(f"PyTorch and gcm-inspect disagree: max relative score difference {err:.2e}")


if __name__ == "__main__":
    main()
