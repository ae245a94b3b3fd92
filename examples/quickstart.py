"""grass end to end: train a small classifier, find the training examples behind its test
predictions, and spot mislabelled training examples by their self-influence.

    python examples/quickstart.py       (well under a minute on 2 CPU cores; writes runs/quickstart)
"""
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import grass

torch.manual_seed(0)

# Data: 4 classes in 20 dimensions; 5% of the training labels are flipped on purpose.
n_train, n_test, classes, dim = 2000, 200, 4, 20
centers = torch.randn(classes, dim) * 1.5


def sample(n):
    y = torch.randint(0, classes, (n,))
    return centers[y] + torch.randn(n, dim), y


x_train, y_train = sample(n_train)
x_test, y_test = sample(n_test)
flipped = torch.randperm(n_train)[:100]
y_train[flipped] = (y_train[flipped] + torch.randint(1, classes, (100,))) % classes

# A model, trained as usual.
model = nn.Sequential(nn.Linear(dim, 64), nn.ReLU(), nn.Linear(64, classes))
opt = torch.optim.Adam(model.parameters(), lr=1e-2)
for _ in range(100):
    opt.zero_grad()
    nn.functional.cross_entropy(model(x_train), y_train).backward()
    opt.step()
model.eval()


def loss_fn(model, batch):  # per-sample losses, shape [B]
    x, y = batch
    return nn.functional.cross_entropy(model(x), y, reduction="none")


# Loaders in a fixed order: row i of the gradient store is training example i.
train_loader = DataLoader(TensorDataset(x_train, y_train), batch_size=256)
test_loader = DataLoader(TensorDataset(x_test, y_test), batch_size=256)

attr = grass.Attributor(model, loss_fn, compressor=grass.compress.FactGraSS(k=256, seed=0),
                        store="runs/quickstart")
attr.cache(train_loader)  # compressed per-sample gradients on disk (resumes if interrupted)
attr.fit()                # per-layer Fisher, damping, Cholesky

# The most helpful training examples for each test example (positive = helpful).
values, indices = attr.top_k(test_loader, k=5)
for t in range(3):
    print(f"test {t} (label {int(y_test[t])}): helped most by training examples "
          f"{indices[t].tolist()} with labels {y_train[indices[t]].tolist()}")
same = (y_train[indices] == y_test[:, None]).float().mean().item()
print(f"{same:.0%} of the top-5 helpful examples share the test example's label")

# Mislabelled examples support their own (wrong) label the most: high self-influence.
suspects = attr.self_influence().topk(100).indices
found = torch.isin(suspects, flipped).float().mean().item()
print(f"{found:.0%} of the 100 training examples with the highest self-influence are "
      f"mislabelled (5% of all examples are)")
