"""A PyTorch twin of gcm-inspect's GCM network (src/model/{gcm,layers,config,checkpoint}.rs).

The same network for any `model.json` architecture (encoder widths and depths,
decoder convolutions per stage, head kernel, shared or per-class decoder,
clipped, input scaling), with the same tensor names, so that

* `load_model(dir)` reads a gcm-inspect model directory (model.safetensors +
  model.json) into the twin, and
* `save_model(dir, ...)` writes the twin's weights as a model directory that
  `gcm-inspect eval/explain/run` load (the card's sha256 and parameter count
  are filled in as gcm-inspect does).

Layers (PyTorch conventions, as the checkpoint module documents): 3x3
convolutions without bias, padding 1, stride 2 for the first convolution of
every encoder stage after the first; BatchNorm (eps from the card, momentum
0.1) and ReLU after each; stride-2 transposed 3x3 convolutions with padding 1
and output padding 1; a k x k head with bias and padding k/2. The class score
is the plain mean of CWM x scaled input over rows, columns and channels.
"""
import hashlib
import json
import os

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

CARD_FORMAT = "gcm-inspect-model/1"
DEFAULTS = {
    "encoder_widths": [16, 32, 64],
    "encoder_depths": [4, 3, 3],
    "decoder_convs_per_stage": 1,
    "head_kernel": 5,
    "shared_decoder": True,
    "clipped": False,
    "scaling": {"kind": "raw"},
    "bn_eps": 1e-5,
}


def full_config(cfg):
    """The model config with gcm-inspect's defaults for absent fields."""
    out = dict(DEFAULTS)
    out.update(cfg)
    return out


class Layer(nn.Module):
    """Convolution (or stride-2 transposed convolution), BatchNorm, ReLU."""

    def __init__(self, cin, cout, stride=1, deconv=False, eps=1e-5):
        super().__init__()
        if deconv:
            self.deconv = nn.ConvTranspose2d(cin, cout, 3, 2, 1, output_padding=1, bias=False)
        else:
            self.conv = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn = nn.BatchNorm2d(cout, eps=eps, momentum=0.1)

    def forward(self, x):
        op = self.deconv if hasattr(self, "deconv") else self.conv
        return F.relu(self.bn(op(x)))


def encoder_plan(cfg):
    plan, cin = [], cfg["input_channels"]
    for stage, (w, depth) in enumerate(zip(cfg["encoder_widths"], cfg["encoder_depths"])):
        for j in range(depth):
            plan.append(dict(cin=cin, cout=w, stride=2 if stage > 0 and j == 0 else 1, deconv=False))
            cin = w
    return plan


def decoder_plan(cfg):
    widths = cfg["encoder_widths"]
    plan, cin = [], widths[-1]
    for stage in reversed(range(len(widths) - 1)):
        w = widths[stage]
        plan.append(dict(cin=cin, cout=w, stride=2, deconv=True))
        for _ in range(cfg["decoder_convs_per_stage"]):
            plan.append(dict(cin=w, cout=w, stride=1, deconv=False))
        cin = w
    return plan


def scaling_affine(cfg):
    s, d = cfg["scaling"], cfg["input_channels"]
    kind = s["kind"]
    if kind == "raw":
        return [1.0] * d, [0.0] * d
    if kind == "inverted":
        return [-1.0] * d, [1.0] * d
    if kind == "centred":
        return [1.0] * d, [-m for m in s["mean"]]
    raise ValueError(f"unknown scaling {kind!r}")


class GcmTwin(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        cfg = full_config(cfg)
        self.cfg = cfg
        eps = cfg["bn_eps"]
        mk = lambda p: Layer(p["cin"], p["cout"], p["stride"], p["deconv"], eps)
        self.encoder = nn.ModuleList(mk(p) for p in encoder_plan(cfg))
        n = len(cfg["classes"])
        if cfg["shared_decoder"]:
            self.decoder = nn.ModuleList(mk(p) for p in decoder_plan(cfg))
        else:
            self.decoders = nn.ModuleList(
                nn.ModuleList(mk(p) for p in decoder_plan(cfg)) for _ in range(n)
            )
        k = cfg["head_kernel"]
        self.head = nn.Conv2d(cfg["encoder_widths"][0], n, k, 1, k // 2)
        a, b = scaling_affine(cfg)
        d = cfg["input_channels"]
        self.register_buffer("scale_a", torch.tensor(a).view(1, d, 1, 1), persistent=False)
        self.register_buffer("scale_b", torch.tensor(b).view(1, d, 1, 1), persistent=False)
        # gcm-inspect's initialisation: He-normal convolutions (gain 1 for the
        # linear head), BN at identity, zero head bias.
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
                fan_in = m.weight.shape[1 if isinstance(m, nn.Conv2d) else 0] * m.weight[0, 0].numel()
                gain = 1.0 if m is self.head else 2.0
                nn.init.normal_(m.weight, 0.0, (gain / fan_in) ** 0.5)
        nn.init.zeros_(self.head.bias)
        # Training's dropout on the decoder's output, before the head
        # (`head_dropout`; train_twin.py sets it; off in eval mode).
        self.head_dropout = 0.0

    def before_head(self, d):
        return F.dropout(d, self.head_dropout, self.training) if self.head_dropout > 0 else d

    def cwm(self, scaled):
        h = scaled
        for l in self.encoder:
            h = l(h)
        if self.cfg["shared_decoder"]:
            for l in self.decoder:
                h = l(h)
            cwm = self.head(self.before_head(h))
        else:
            maps = []
            for j, dec in enumerate(self.decoders):
                d = h
                for l in dec:
                    d = l(d)
                maps.append(F.conv2d(self.before_head(d), self.head.weight[j:j + 1], self.head.bias[j:j + 1],
                                     padding=self.cfg["head_kernel"] // 2))
            cwm = torch.cat(maps, 1)
        return F.relu(cwm) if self.cfg["clipped"] else cwm

    def forward_all(self, x):
        """Raw input in [0, 1], [B, D, R, C] -> (scores [B, N], cwm [B, N, R, C], scaled input)."""
        scaled = x * self.scale_a + self.scale_b
        cwm = self.cwm(scaled)
        s = scaled.sum(1, keepdim=True)  # CWM tiled over D, times the input, summed over D
        scores = (cwm * s).mean((2, 3)) / scaled.shape[1]
        return scores, cwm, scaled

    def forward(self, x):
        return self.forward_all(x)[0]

    def checkpoint_tensors(self):
        """The tensors of model.safetensors (gcm-inspect's names; no num_batches_tracked)."""
        return {k: v.detach().float().contiguous().cpu()
                for k, v in self.state_dict().items() if not k.endswith("num_batches_tracked")}

    def num_parameters(self):
        return sum(p.numel() for p in self.parameters())


def load_model(model_dir):
    """A gcm-inspect model directory -> (card dict, GcmTwin in eval mode)."""
    from safetensors.torch import load_file

    with open(os.path.join(model_dir, "model.json")) as f:
        card = json.load(f)
    if card.get("format") != CARD_FORMAT:
        raise ValueError(f"{model_dir}: model.json format {card.get('format')!r} is not {CARD_FORMAT}")
    net = GcmTwin(card["model"])
    tensors = load_file(os.path.join(model_dir, "model.safetensors"))
    want = net.checkpoint_tensors()
    missing = sorted(set(want) - set(tensors))
    extra = sorted(set(tensors) - set(want))
    if missing or extra:
        raise ValueError(f"{model_dir}: tensors missing {missing[:3]}, unexpected {extra[:3]}")
    for k, v in tensors.items():
        if tuple(v.shape) != tuple(want[k].shape):
            raise ValueError(f"{model_dir}: {k} has shape {tuple(v.shape)}, expected {tuple(want[k].shape)}")
    net.load_state_dict(tensors, strict=False)
    net.eval()
    return card, net


def save_model(model_dir, net, training=None, data=None, metrics=None):
    """Writes the twin as a gcm-inspect model directory (model.safetensors + model.json)."""
    from safetensors.torch import save_file

    os.makedirs(model_dir, exist_ok=True)
    path = os.path.join(model_dir, "model.safetensors")
    tmp = path + ".tmp"
    save_file(net.checkpoint_tensors(), tmp)
    with open(tmp, "rb") as f:
        sha = hashlib.sha256(f.read()).hexdigest()
    os.replace(tmp, path)
    card = {
        "format": CARD_FORMAT,
        "model": net.cfg,
        "parameters": net.num_parameters(),
        "weights_sha256": sha,
        "training": training,
        "data": data,
        "metrics": metrics,
        "written_by": "scripts/reference/gcm_twin.py (PyTorch %s)" % torch.__version__,
    }
    with open(os.path.join(model_dir, "model.json.tmp"), "w") as f:
        json.dump(card, f, indent=2)
    os.replace(os.path.join(model_dir, "model.json.tmp"), os.path.join(model_dir, "model.json"))
    return card


def load_grey(path, size=None):
    """An 8-bit grey image as a uint8 array, resized to size x size (bilinear with
    antialiasing: the triangle filter gcm-inspect's --resize uses; values can
    differ by one grey level from gcm-inspect's)."""
    from PIL import Image

    with Image.open(path) as im:
        im = im.convert("L")
        if size is not None and im.size != (size, size):
            im = im.resize((size, size), Image.BILINEAR)
        return np.asarray(im, dtype=np.uint8)


def read_manifest(path):
    """(rows of dicts with absolute 'path', 'label', 'split'), sorted classes."""
    import csv

    base = os.path.dirname(os.path.abspath(path))
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    for r in rows:
        r["path"] = os.path.join(base, r["path"])
    classes = sorted({r["label"] for r in rows})
    return rows, classes
