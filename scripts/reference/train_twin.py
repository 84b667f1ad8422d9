"""Trains the PyTorch twin with gcm-inspect's recipe (a `train --config` YAML).

    .venv-ref/bin/python scripts/reference/train_twin.py \
        --data data/elpv/binary.csv --config config/elpv-binary.yaml --out data/runs/x

The same semantics as `gcm-inspect train` (src/train/): the manifest's `train`
rows only (`test` rows are never read unless --test is given), a validation
set stratified by label carved out of them with `val_fraction` and `seed` (not
the same images as gcm-inspect's split, which uses its own RNG), SGD with
momentum or AdamW (`optimizer`), weight decay on convolution weights only
(L2 for SGD, decoupled for AdamW, as in PyTorch), the step schedule at
`lr_milestones_fraction`, optional inverse-frequency class weights, flips /
90-degree rotations / zero pad-and-crop, dropout before the head
(`head_dropout`, PyTorch's own random masks), mixup (`mixup`: one Beta(alpha, alpha)
blend per batch with a shuffled copy of itself, from NumPy's generator), the best epoch by validation accuracy
(ties: lower loss). Images are resized with PIL's antialiased bilinear filter.

Writes OUT/model.safetensors + OUT/model.json (loadable by gcm-inspect) and
OUT/history.jsonl; prints one JSON line per epoch and a summary line.
--test evaluates the best model on the manifest's test rows once at the end.
"""
import argparse
import json
import os
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F
import yaml

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from gcm_twin import GcmTwin, load_grey, read_manifest, save_model  # noqa: E402

DEFAULTS = dict(epochs=180, batch_size=128, optimizer="sgd", lr=0.1, momentum=0.9, weight_decay=5e-4,
                lr_milestones_fraction=[100 / 180, 150 / 180], lr_decay_factor=0.1,
                val_fraction=0.1, seed=0, eval_batch_size=256, resize=False,
                class_balanced_loss=False, ema_decay=0.0, label_smoothing=0.0, head_dropout=0.0,
                soft_target=None, mixup=0.0, topk_loss=None)
AUG_DEFAULTS = dict(hflip=True, vflip=False, rot90=False, pad_crop_px=4, exposure=0.0, brightness=0.0)


def load_config(path):
    cfg = dict(DEFAULTS)
    raw = {}
    if path:
        with open(path) as f:
            raw = yaml.safe_load(f) or {}
    unknown = sorted(set(raw) - set(DEFAULTS) - {"augment", "model"})
    unknown += sorted(f"augment.{k}" for k in set(raw.get("augment") or {}) - set(AUG_DEFAULTS))
    if unknown:
        sys.exit(f"{path}: unknown key(s) {', '.join(unknown)} (the twin would silently differ)")
    cfg.update({k: v for k, v in raw.items() if k not in ("augment", "model")})
    cfg["augment"] = dict(AUG_DEFAULTS, **(raw.get("augment") or {}))
    cfg["model"] = dict(raw.get("model") or {})
    return cfg


def lr_at(cfg, epoch):
    passed = sum(1 for f in cfg["lr_milestones_fraction"] if epoch >= round(f * cfg["epochs"]))
    return cfg["lr"] * cfg["lr_decay_factor"] ** passed


def stratified_val(labels, frac, seed):
    rng = np.random.RandomState(seed)
    val = []
    for c in sorted(set(labels)):
        idx = [i for i, l in enumerate(labels) if l == c]
        rng.shuffle(idx)
        val += idx[: int(round(frac * len(idx)))]
    val = set(val)
    return [i for i in range(len(labels)) if i not in val], sorted(val)


def soft_targets(rows, classes, st, manifest):
    """soft_target: [N, 2] targets from a manifest column, checked as src/train/mod.rs does."""
    if len(classes) != 2:
        sys.exit(f"soft_target: needs a two-class model; this one has classes {classes}")
    if st["class"] not in classes:
        sys.exit(f"soft_target.class: {st['class']!r} is not a class of the model {classes}")
    c = classes.index(st["class"])
    out = []
    for r in rows:
        cols = {k.lower(): v for k, v in r.items()}
        if st["column"].lower() not in cols:
            sys.exit(f"{manifest}: soft_target.column: no column {st['column']!r}")
        v = cols[st["column"].lower()]
        try:
            p = float(v)
        except (TypeError, ValueError):
            p = float("nan")
        if not 0.0 <= p <= 1.0:
            sys.exit(f"{manifest}: {r['path']}: {st['column']} {v!r} is not a probability in [0, 1]")
        if p != 0.5 and classes[c if p > 0.5 else 1 - c] != r["label"]:
            sys.exit(f"{manifest}: {r['path']}: {st['column']} {p} for {st['class']!r} contradicts the label")
        t = [0.0, 0.0]
        t[c], t[1 - c] = p, 1.0 - p
        out.append(t)
    return torch.tensor(out, dtype=torch.float32)


def load_set(rows, size, classes):
    x = np.stack([load_grey(r["path"], size) for r in rows])[:, None]
    y = np.array([classes.index(r["label"]) for r in rows])
    return torch.from_numpy(x), torch.from_numpy(y)


def augment(xb, aug, gen):
    """Per image: exposure gain and brightness offset (clamped to [0, 1]; zero
    padding stays 0), zero pad-and-crop, flips, rotation by k*90 degrees
    (uint8 in, float out)."""
    x = xb.float() / 255.0
    if aug["exposure"] > 0 or aug["brightness"] > 0:
        # Drawn only when on, so that configs without them keep their stream.
        u = 2.0 * torch.rand(x.shape[0], 2, generator=gen) - 1.0
        gain = (1.0 + aug["exposure"] * u[:, 0]).view(-1, 1, 1, 1)
        x = (x * gain + aug["brightness"] * u[:, 1].view(-1, 1, 1, 1)).clamp(0.0, 1.0)
    out = torch.empty_like(x)
    p = aug["pad_crop_px"]
    r = torch.randint(0, 2**31 - 1, (x.shape[0], 5), generator=gen)
    for i in range(x.shape[0]):
        im = x[i]
        if p > 0:
            dy, dx = int(r[i, 0] % (2 * p + 1)), int(r[i, 1] % (2 * p + 1))
            im = F.pad(im, (p, p, p, p))[:, dy:dy + x.shape[2], dx:dx + x.shape[3]]
        if aug["hflip"] and r[i, 2] % 2:
            im = im.flip(2)
        if aug["vflip"] and (r[i, 3] // 2) % 2:
            im = im.flip(1)
        if aug["rot90"] and x.shape[2] == x.shape[3]:
            im = torch.rot90(im, int(r[i, 4] % 4), (1, 2))
        out[i] = im
    return out


def evaluate(net, x, y, batch, weights=None):
    net.eval()
    correct, loss, n = 0, 0.0, 0
    with torch.inference_mode():
        for s in range(0, len(x), batch):
            xb, yb = x[s:s + batch].float() / 255.0, y[s:s + batch]
            scores = net(xb)
            loss += F.cross_entropy(scores, yb, reduction="sum").item()
            correct += (scores.argmax(1) == yb).sum().item()
            n += len(xb)
    return correct / n, loss / n


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", required=True)
    ap.add_argument("--config")
    ap.add_argument("--out", required=True)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--epochs", type=int)
    ap.add_argument("--size", type=int, help="input rows = columns")
    ap.add_argument("--scaling", choices=["raw", "inverted", "centred"])
    ap.add_argument("--widths", help="encoder widths, e.g. 16,32,64")
    ap.add_argument("--lr", type=float)
    ap.add_argument("--seed", type=int)
    ap.add_argument("--set", action="append", default=[],
                    help="KEY=YAML override, e.g. augment.pad_crop_px=4 or class_balanced_loss=true")
    ap.add_argument("--test", action="store_true", help="evaluate the best model on the test rows at the end")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)

    cfg = load_config(a.config)
    m = cfg["model"]
    if a.epochs:
        cfg["epochs"] = a.epochs
    if a.size:
        m["input_rows"] = m["input_cols"] = a.size
    if a.scaling:
        m["scaling"] = a.scaling
    if a.widths:
        m["encoder_widths"] = [int(w) for w in a.widths.split(",")]
    if a.lr:
        cfg["lr"] = a.lr
    if a.seed is not None:
        cfg["seed"] = a.seed
    for kv in a.set:
        k, v = kv.split("=", 1)
        d = cfg
        *path, last = k.split(".")
        for p in path:
            d = d[p]
        d[last] = yaml.safe_load(v)

    if cfg["optimizer"] not in ("sgd", "adamw"):
        sys.exit(f"{a.config}: optimizer: {cfg['optimizer']!r} is not sgd or adamw")

    rows, classes = read_manifest(a.data)
    train_rows = [r for r in rows if r.get("split") == "train"]
    val_rows = [r for r in rows if r.get("split") == "val"]
    if not val_rows:
        tr, va = stratified_val([r["label"] for r in train_rows], cfg["val_fraction"], cfg["seed"])
        train_rows, val_rows = [train_rows[i] for i in tr], [train_rows[i] for i in va]
    size = m.get("input_rows")
    t0 = time.time()
    # Soft targets are checked before the (slow) decoding, as gcm-inspect does.
    ttr = None
    if cfg["soft_target"]:
        if cfg["class_balanced_loss"]:
            sys.exit(f"{a.config}: soft_target and class_balanced_loss cannot be used together")
        ttr = soft_targets(train_rows, classes, cfg["soft_target"], a.data)
    xtr, ytr = load_set(train_rows, size, classes)
    xva, yva = load_set(val_rows, size, classes)
    print(f"loaded {len(xtr)} train / {len(xva)} val images at {tuple(xtr.shape[2:])} in "
          f"{time.time() - t0:.1f}s", file=sys.stderr)

    scaling = m.get("scaling", "raw")
    if scaling == "centred":
        scaling_cfg = {"kind": "centred", "mean": [float(xtr.float().mean() / 255.0)]}
    else:
        scaling_cfg = {"kind": scaling}
    model_cfg = {k: v for k, v in m.items() if k not in ("scaling",)}
    model_cfg.update(input_rows=xtr.shape[2], input_cols=xtr.shape[3], input_channels=1,
                     classes=classes, scaling=scaling_cfg)
    torch.manual_seed(cfg["seed"])
    net = GcmTwin(model_cfg)
    net.head_dropout = cfg["head_dropout"]
    decay = [p for n, p in net.named_parameters() if n.endswith("weight") and p.dim() == 4]
    other = [p for n, p in net.named_parameters() if not (n.endswith("weight") and p.dim() == 4)]
    groups = [{"params": decay, "weight_decay": cfg["weight_decay"]},
              {"params": other, "weight_decay": 0.0}]
    if cfg["optimizer"] == "adamw":
        opt = torch.optim.AdamW(groups, lr=cfg["lr"], betas=(0.9, 0.999), eps=1e-8)
    else:
        opt = torch.optim.SGD(groups, lr=cfg["lr"], momentum=cfg["momentum"])
    weights = None
    if cfg["class_balanced_loss"]:
        counts = torch.bincount(ytr, minlength=len(classes)).float()
        weights = counts.sum() / (len(classes) * counts.clamp(min=1))
    gen = torch.Generator().manual_seed(cfg["seed"] + 1)
    if not (cfg["mixup"] == 0 or cfg["mixup"] >= 0.01):
        sys.exit(f"{a.config}: mixup: {cfg['mixup']} must be 0 (off) or at least 0.01")
    if cfg["mixup"] > 0 and cfg["class_balanced_loss"]:
        sys.exit(f"{a.config}: mixup and class_balanced_loss cannot be used together")
    tk = cfg["topk_loss"]
    if tk is not None and not (isinstance(tk, dict) and set(tk) == {"fraction", "weight"}
                               and 0 < tk["fraction"] <= 1 and tk["weight"] > 0):
        sys.exit(f"{a.config}: topk_loss: {tk!r} needs fraction in (0, 1] and weight > 0")
    mix_rng = np.random.default_rng(cfg["seed"] + 2)
    # ema_decay: validate and save an average of every float tensor of the
    # state (weights and BatchNorm statistics), updated after each step with
    # decay min(ema_decay, (1 + n) / (10 + n)), as src/train/ema.rs does.
    ema, ema_updates = None, 0
    if cfg["ema_decay"] > 0:
        ema = {k: v.detach().clone() for k, v in net.state_dict().items() if v.dtype.is_floating_point}
    os.makedirs(a.out, exist_ok=True)
    hist = open(os.path.join(a.out, "history.jsonl"), "w")
    best, secs = None, []
    params = net.num_parameters()
    for epoch in range(cfg["epochs"]):
        t = time.time()
        lr = lr_at(cfg, epoch)
        for g in opt.param_groups:
            g["lr"] = lr
        net.train()
        order = torch.randperm(len(xtr), generator=gen)
        loss_sum, correct, seen = 0.0, 0, 0
        for s in range(0, len(order), cfg["batch_size"]):
            idx = order[s:s + cfg["batch_size"]]
            if len(idx) < 2:
                continue
            xb, yb = augment(xtr[idx], cfg["augment"], gen), ytr[idx]
            # Soft targets (probabilities) where configured: PyTorch applies
            # label smoothing to them as to one-hot labels.
            target = yb if ttr is None else ttr[idx]
            truth = yb
            if cfg["mixup"] > 0:
                # Blend the batch with a shuffled copy of itself, and the targets alike
                # (src/train/data.rs `mixup`); the blend's larger class counts as the truth.
                if ttr is None:
                    target = F.one_hot(yb, len(classes)).float()
                lam = float(mix_rng.beta(cfg["mixup"], cfg["mixup"]))
                perm = torch.from_numpy(mix_rng.permutation(len(idx)))
                xb = lam * xb + (1 - lam) * xb[perm]
                target = lam * target + (1 - lam) * target[perm]
                truth = target.argmax(1)
            scores, cwm, scaled = net.forward_all(xb)
            loss = F.cross_entropy(scores, target, weight=weights, label_smoothing=cfg["label_smoothing"])
            if cfg["topk_loss"]:
                # Each class's contributions averaged over the input channels, then
                # over its `fraction` largest pixels (src/train/mod.rs `topk_scores`).
                tk = cfg["topk_loss"]
                per_pixel = (cwm * scaled.mean(1, keepdim=True)).flatten(2)
                # Rounded half away from zero, as Rust's f64::round.
                k = min(max(1, int(tk["fraction"] * per_pixel.shape[2] + 0.5)), per_pixel.shape[2])
                top = per_pixel.topk(k, dim=2).values.mean(2)
                loss = loss + tk["weight"] * F.cross_entropy(
                    top, target, weight=weights, label_smoothing=cfg["label_smoothing"])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if ema is not None:
                d = min(cfg["ema_decay"], (1 + ema_updates) / (10 + ema_updates))
                with torch.no_grad():
                    for k, v in net.state_dict().items():
                        if k in ema:
                            ema[k].mul_(d).add_(v.detach(), alpha=1 - d)
                ema_updates += 1
            if not torch.isfinite(loss):
                sys.exit(f"training diverged at epoch {epoch + 1}; lower lr (now {lr})")
            loss_sum += loss.item() * len(idx)
            correct += (scores.argmax(1) == truth).sum().item()
            seen += len(idx)
        train_secs = time.time() - t
        own = None
        if ema is not None:
            own_acc, _ = evaluate(net, xva, yva, cfg["eval_batch_size"])
            own = {k: v.detach().clone() for k, v in net.state_dict().items()}
            net.load_state_dict({**own, **ema})
        va_acc, va_loss = evaluate(net, xva, yva, cfg["eval_batch_size"])
        rec = dict(epoch=epoch + 1, lr=lr, train_loss=loss_sum / seen, train_accuracy=correct / seen,
                   val_loss=va_loss, val_accuracy=va_acc, seconds=time.time() - t,
                   train_seconds=train_secs, images_per_second=seen / train_secs)
        if own is not None:
            rec["val_accuracy_train_weights"] = own_acc
        secs.append(train_secs)
        print(json.dumps(rec), flush=True)
        hist.write(json.dumps(rec) + "\n")
        hist.flush()
        if best is None or va_acc > best["val_accuracy"] or (
                va_acc == best["val_accuracy"] and va_loss < best["val_loss"]):
            best = dict(epoch=epoch + 1, val_accuracy=va_acc, val_loss=va_loss, val_images=len(xva),
                        train_accuracy=rec["train_accuracy"], train_loss=rec["train_loss"])
            save_model(a.out, net, training=cfg, metrics=best,
                       data={"source": os.path.abspath(a.data), "classes": classes,
                             "train_images": len(xtr), "val_images": len(xva)})
        if own is not None:
            net.load_state_dict(own)
    summary = dict(best=best, parameters=params, median_epoch_train_seconds=float(np.median(secs)),
                   threads=a.threads, torch=torch.__version__, config=cfg)
    if a.test:
        from gcm_twin import load_model
        _, best_net = load_model(a.out)
        test_rows = [r for r in rows if r.get("split") == "test"]
        xte, yte = load_set(test_rows, size, classes)
        summary["test_accuracy"], summary["test_loss"] = evaluate(best_net, xte, yte, cfg["eval_batch_size"])
        summary["test_images"] = len(xte)
    print(json.dumps({"summary": summary}), flush=True)


if __name__ == "__main__":
    main()
