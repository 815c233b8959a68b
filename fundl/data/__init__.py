"""Data pipeline: pure batching, data sources, splits, one-hot labels and standardisation.

::

    from fundl import data, random
    (x_tr, y_tr), (x_te, y_te) = data.train_test_split(k_split, (x, y), test_size=0.2)
    x_tr, stats = data.standardize(x_tr)          # fit on train ...
    x_te, _ = data.standardize(x_te, stats)       # ... apply to test
    for xb, yb in data.batches(k_epoch, (x_tr, y_tr), batch_size=128):
        ...

Data sources for :func:`fundl.fit` (see :mod:`fundl.data.sources`): ``from_arrays``,
``map_batches`` (a keyed augmentation over batches), ``interleave`` (several files or
memmaps read in chunks with flat memory).
"""

from .batching import batches, num_batches
from .preprocess import Standardizer, one_hot, standardize, train_test_split
from .sources import Source, from_arrays, interleave, map_batches

__all__ = ["batches", "num_batches", "train_test_split", "one_hot", "Standardizer", "standardize",
           "Source", "from_arrays", "map_batches", "interleave"]
