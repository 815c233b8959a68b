"""A small causal character language model (a pre-LN transformer) trained on fundl's own text.

The corpus ships with the repository: its README.md followed by every docstring
of the ``fundl`` package (read with ``ast``, files in sorted order).  The first
90% of the characters train the model, the last 10% are held out for
validation.  The model, with ``d = --width``::

    ids (batch, time) -> embedding(vocab, d) + positional_embedding(time)
      2 x [ x + multi_head_attention(causal)(layer_norm(x)),
            x + dense(d)(gelu(dense(4d)(layer_norm(x)))) ]
      -> layer_norm -> dense(vocab)           logits (batch, time, vocab)

trained with ``softmax_cross_entropy`` on the next character at every
position, AdamW with global-norm clipping and a warm-up/cosine schedule.  Each
epoch prints the training and validation loss in bits per character (nats /
ln 2), next to the unigram baseline (the held-out text's cross-entropy under
the training text's character frequencies); at the end the model writes about
300 characters from a prompt, each drawn with ``fl.random.categorical`` from
its logits divided by a temperature.  Every key is fixed: the same run gives
the same numbers and the same text.

Run:  python3 examples/char_transformer.py           (about 1-2 minutes on 2 cores)
      python3 examples/char_transformer.py --quick   (about 10 seconds; a short run)
"""

from __future__ import annotations

import argparse
import ast
import math
import pathlib
import sys
import time
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

import fundl as fl

ROOT = pathlib.Path(__file__).resolve().parents[1]
LN2 = math.log(2.0)


def corpus(root: pathlib.Path = ROOT) -> str:
    """README.md, then every docstring of ``root/fundl/**/*.py`` (sorted paths, source order)."""
    parts = [(root / "README.md").read_text(encoding="utf-8")]
    for path in sorted((root / "fundl").rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        nodes = [tree] + [n for n in ast.walk(tree)
                          if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))]
        nodes.sort(key=lambda n: getattr(n, "lineno", 0))
        parts += [doc for doc in (ast.get_docstring(n) for n in nodes) if doc]
    return "\n\n".join(parts)


def windows(ids: np.ndarray, length: int, stride: int) -> Tuple[np.ndarray, np.ndarray]:
    """Inputs ``(n, length)`` and next-character targets ``(n, length)`` from windows of
    ``length + 1`` characters starting every ``stride`` characters."""
    starts = np.arange(0, ids.size - length, stride)
    index = starts[:, None] + np.arange(length + 1)[None, :]
    chunks = ids[index]
    return chunks[:, :-1], chunks[:, 1:]


def unigram_bits(train_ids: np.ndarray, val_ids: np.ndarray, vocab: int) -> float:
    """Bits per character of ``val_ids`` under the (add-one smoothed) character
    frequencies of ``train_ids``: what a model ignoring all context would score."""
    counts = np.bincount(train_ids, minlength=vocab) + 1.0
    logp = np.log2(counts / counts.sum())
    return float(-logp[val_ids].mean())


def transformer(vocab: int, context: int, width: int, heads: int, blocks: int) -> fl.Layer:
    """The pre-LN causal transformer of the module docstring: ids ``(batch, time)`` with
    ``time <= context`` -> logits ``(batch, time, vocab)``."""
    layers = [fl.embedding(vocab, width, w_init=fl.initializers.normal(0.02)),
              fl.positional_embedding(context)]
    for _ in range(blocks):
        layers.append(fl.residual(fl.serial(fl.layer_norm(),
                                             fl.multi_head_attention(heads, causal=True))))
        layers.append(fl.residual(fl.serial(fl.layer_norm(), fl.dense(4 * width), fl.gelu(),
                                            fl.dense(width))))
    layers += [fl.layer_norm(), fl.dense(vocab)]
    return fl.serial(*layers)


def sample(model: fl.Layer, params: Any, state: Any, prompt_ids: np.ndarray, n: int,
           context: int, temperature: float, key: Any) -> np.ndarray:
    """``n`` character ids drawn one at a time after ``prompt_ids``, each from
    ``softmax(logits / temperature)`` at the last position of the latest ``context`` ids."""
    ids = list(prompt_ids)
    for i in range(n):
        window = np.asarray(ids[-context:], np.int64)[None]
        logits = model.apply(params, state, window)[0, -1]
        ids.append(int(fl.random.categorical(fl.random.fold_in(key, i), logits / temperature)))
    return np.asarray(ids[len(prompt_ids):], np.int64)


def run(*, epochs: int = 8, context: int = 64, width: int = 64, heads: int = 4,
        blocks: int = 2, batch_size: int = 32, lr: float = 5e-3, chars: Optional[int] = None,
        sample_chars: int = 300, temperature: float = 0.7, prompt: str = "A layer is ",
        seed: int = 0, verbose: bool = True) -> Dict[str, Any]:
    """Train the model and sample from it; returns a dict of the results.

    ``chars`` keeps only the first ``chars`` characters of the corpus (for short
    runs).  The result holds ``history`` (``fit``'s, losses in nats), the per-epoch
    ``train_bits`` and ``val_bits`` lists, ``unigram_bits``, ``sample`` (the text),
    ``seconds`` (training only), ``params`` and the ``model``.
    """
    say = print if verbose else (lambda *a, **k: None)
    text = corpus()
    if chars is not None:
        text = text[:chars]
    alphabet = sorted(set(text))
    lookup = {c: i for i, c in enumerate(alphabet)}
    ids = np.array([lookup[c] for c in text], np.int64)
    cut = int(0.9 * ids.size)
    train_ids, val_ids = ids[:cut], ids[cut:]
    x_train, y_train = windows(train_ids, context, context // 2)
    x_val, y_val = windows(val_ids, context, context)
    baseline = unigram_bits(train_ids, val_ids, len(alphabet))

    model = transformer(len(alphabet), context, width, heads, blocks)
    steps = epochs * -(-len(x_train) // batch_size)
    opt = fl.optim.chain(fl.optim.clip_by_global_norm(1.0), fl.optim.adamw(weight_decay=1e-2))
    schedule = fl.optim.warmup_cosine(lr, max(1, steps // 20), max(2, steps), end=lr / 20)
    say(f"corpus: README.md + fundl's docstrings, {ids.size:,} characters, vocabulary "
        f"{len(alphabet)}; {train_ids.size:,} train / {val_ids.size:,} validation")
    say(f"model: {blocks} pre-LN blocks, width {width}, {heads} heads, context {context}; "
        f"{len(x_train)} training windows, batch {batch_size}, {steps} steps")
    say(f"unigram baseline on the validation text: {baseline:.3f} bits/char\n")

    train_bits: List[float] = []
    val_bits: List[float] = []

    def report(ts, logs):
        train_bits.append(logs["loss"] / LN2)
        val_bits.append(logs["val_loss"] / LN2)
        say(f"epoch {logs['epoch']:3d}  step {logs['step']:5d}  train {train_bits[-1]:.3f} "
            f"bits/char  validation {val_bits[-1]:.3f} bits/char")

    k_fit, k_sample = fl.random.split(fl.random.key(seed))
    start = time.perf_counter()
    ts, history = fl.fit(model, fl.losses.softmax_cross_entropy, opt, (x_train, y_train),
                         key=k_fit, epochs=epochs, batch_size=batch_size, lr=schedule,
                         val_data=(x_val, y_val), callbacks=[report], progress=False)
    seconds = time.perf_counter() - start
    say(f"\ntrained {ts.step} steps in {seconds:.1f} s ({fl.tree.size(ts.params):,} params)")

    prompt = "".join(c for c in prompt if c in lookup) or text[:1]
    drawn = sample(model, ts.params, ts.state, np.array([lookup[c] for c in prompt]),
                   sample_chars, context, temperature, k_sample)
    generated = "".join(alphabet[i] for i in drawn)
    say(f"sample (temperature {temperature}):\n{prompt}{generated}")
    return {"history": history, "train_bits": train_bits, "val_bits": val_bits,
            "unigram_bits": baseline, "sample": generated, "seconds": seconds,
            "params": ts.params, "model": model}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="a character transformer on fundl's own text")
    parser.add_argument("--quick", action="store_true",
                        help="a short run (4 epochs on the first 30,000 characters)")
    parser.add_argument("--epochs", type=int, default=None, help="training epochs (default 8)")
    parser.add_argument("--temperature", type=float, default=0.7, help="sampling temperature")
    parser.add_argument("--prompt", default="A layer is ", help="the text the sample continues")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.quick:
        result = run(epochs=args.epochs or 4, chars=30_000, temperature=args.temperature,
                     prompt=args.prompt, seed=args.seed)
    else:
        result = run(epochs=args.epochs or 8, temperature=args.temperature, prompt=args.prompt,
                     seed=args.seed)
    gain = result["unigram_bits"] - result["val_bits"][-1]
    print(f"\nvalidation {result['val_bits'][-1]:.3f} bits/char, {gain:.3f} below the unigram "
          f"baseline ({result['unigram_bits']:.3f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
