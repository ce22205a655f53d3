"""Training the toy-* models reproducibly on a toy training split (``audiobench train-toy``).

The committed weights (audiobench/assets/weights/toy-*.pt) were made with the defaults of
:func:`train_one`: 512 clips of an independent split of the toy generator (seed 1; the
evaluation set is seed 0), 30 epochs for toy-cnn and 40 for toy-transformer, random 5 s crops
(the models pool over time, so crops train the same function 2x faster), BCE over all 527
classes, AdamW with a one-cycle schedule. Everything is seeded: the same call gives the same
weights on the same torch build and device.
"""

from __future__ import annotations

DEFAULT_EPOCHS = {"toy-cnn": 30, "toy-transformer": 40}


def train_one(name: str, *, n_clips: int, epochs: int, batch_size: int, crop_seconds: float, lr: float, seed: int,
              log=print):
    import numpy as np
    import torch

    from audiobench.data.toy import TOY_SAMPLE_RATE, generate_toy_clips
    from audiobench.models import MODELS

    entry = MODELS.get(name)
    _, wav, tgt = generate_toy_clips(n_clips, seed=seed + 1)
    # the evaluation shard stores int16: train on the same quantisation
    wav = np.round(wav * 32767.0).astype(np.float32) / 32767.0
    x_all = torch.from_numpy(wav)
    y_all = torch.from_numpy(tgt.astype(np.float32))
    crop = int(crop_seconds * TOY_SAMPLE_RATE)
    gen = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):  # parameter init draws from the global RNG: contain it
        torch.manual_seed(seed)
        model = entry.factory(entry.spec)
    model.train()
    opt = torch.optim.AdamW(model.net.parameters(), lr=lr, weight_decay=1e-4)
    steps_per_epoch = (n_clips + batch_size - 1) // batch_size
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=epochs * steps_per_epoch)
    # BCE summed over the 527 classes (mean over clips): a mean over classes would divide the
    # gradient of the ten toy classes by 527 and leave them underfitted.
    bce = torch.nn.BCEWithLogitsLoss(reduction="none")

    def loss_fn(logits, y):
        return bce(logits, y).sum(dim=1).mean()

    for epoch in range(epochs):
        order = torch.randperm(n_clips, generator=gen)
        total = 0.0
        for b in range(steps_per_epoch):
            idx = order[b * batch_size:(b + 1) * batch_size]
            starts = torch.randint(0, x_all.shape[1] - crop + 1, (len(idx),), generator=gen)
            x = torch.stack([x_all[i, s:s + crop] for i, s in zip(idx.tolist(), starts.tolist())])
            gain = 10 ** (torch.empty(len(idx), 1).uniform_(-6, 6, generator=gen) / 20)  # ±6 dB level jitter
            x = (x * gain).clamp(-1, 1)
            loss = loss_fn(model(x), y_all[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total += float(loss.detach()) * len(idx)
        log(f"{name} epoch {epoch + 1}/{epochs} loss {total / n_clips:.4f} (summed over classes)")
    model.eval()
    return model


def evaluate_on_toy(model, batch_size: int = 16) -> float:
    import numpy as np
    import torch

    from audiobench.data import open_dataset
    from audiobench.metrics.tagging import tagging_metrics

    ds = open_dataset(None)
    logits = []
    with torch.no_grad():
        for batch in ds.batches(batch_size):
            logits.append(model(batch.waveform).numpy())
    scores = 1 / (1 + np.exp(-np.concatenate(logits).astype(np.float64)))
    return float(tagging_metrics(scores, ds.targets())["mAP"])


def save_weights(model, path) -> str:
    """Write the trained network's state dict to ``path`` atomically; returns its sha256."""
    import io

    import torch

    from audiobench.fileio import atomic_write_bytes, sha256_file

    buf = io.BytesIO()
    torch.save({k: v.detach().clone() for k, v in model.net.state_dict().items()}, buf)
    atomic_write_bytes(path, buf.getvalue())
    return sha256_file(path)
