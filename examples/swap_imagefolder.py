"""An ordinary ImageFolder training loop where one line changes to train on latents.

    python examples/swap_imagefolder.py            # makes a small SYNTHETIC dataset first
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader

from latentds import LatentDataset
from latentds.testing import synthetic

root = Path(tempfile.mkdtemp()) / "data"
synthetic.make_dataset(root, n_per_class=16, shape=(256, 208), seed=0)

# Before:  train = ImageFolder(root, transform=to_tensor)
train = LatentDataset(root, codec="bicubic-f4", cache=root.parent / "cache", image_size=(256, 208))

loader = DataLoader(train, batch_size=8, shuffle=True, num_workers=2)
model = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.AdaptiveMaxPool2d(1), nn.Flatten(),
                      nn.Linear(16, len(train.classes)))
opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
for epoch in range(3):
    for latents, targets in loader:
        loss = nn.functional.cross_entropy(model(latents), targets)
        opt.zero_grad()
        loss.backward()
        opt.step()
    print(f"epoch {epoch}: loss {loss.item():.3f}")
