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
its logits divided by a temperature.  It samples twice, with the same keys: with
a key/value cache in each attention layer (:func:`decode`: one new position per
character) and recomputing its whole window for every character (``model.apply``),
prints the characters per second of each and checks that both drew the same text
from the same logits (to float32 rounding).  Every key is fixed: the same run gives
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
from fundl.layers.attention import attend_cached, kv_cache

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


#: Layers that act on each position alone: on new positions they run as they are.
POSITIONWISE = {"embedding", "dense", "layer_norm", "rms_norm", "gelu", "relu", "silu", "tanh",
                "sigmoid", "dropout"}


def decode(model: fl.Layer, params: Any, state: Any, caches: Dict[Tuple[str, ...], Any],
           ids: np.ndarray, start: int) -> Tuple[np.ndarray, Dict[Tuple[str, ...], Any]]:
    """``(logits, caches)``: the model's logits ``(batch, new, vocab)`` at the positions
    ``start .. start + new - 1`` of ``ids`` ``(batch, new)``, given ``caches`` (by layer
    path) of the positions before, and the caches grown by the new positions.

    The model runs on the new positions only: each causal attention layer through its
    key/value cache (``attend_cached``), the position embedding at those positions,
    the position-wise layers as they are, residuals and serials as their loops.
    ``decode(model, params, state, {}, ids, 0)`` gives ``model.apply(params, state, ids)``
    (to float rounding) and the caches of every position."""
    grown = dict(caches)

    def run(layer, p, s, x, path):
        if layer.kind == "serial":
            for k, child in layer.children:
                x = run(child, p[k], s[k], x, path + (k,))
            return x
        if layer.kind == "residual":
            ((k, child),) = layer.children
            return x + run(child, p[k], s[k], x, path + (k,))
        if layer.kind == "multi_head_attention":
            cache = grown.get(path)
            if cache is None:
                cache = kv_cache(layer, p, x.shape[0])
            y, grown[path] = attend_cached(layer, p, cache, x)
            return y
        if layer.kind == "positional_embedding":
            return x + p["pos"][start:start + x.shape[1]]
        if layer.kind in POSITIONWISE:
            return layer.apply(p, s, x)
        raise ValueError(f"decode: no incremental form for the {layer.kind} at "
                         f"'{'/'.join(path)}'")

    return run(model, params, state, ids, ()), grown


def sample(model: fl.Layer, params: Any, state: Any, prompt_ids: np.ndarray, n: int,
           context: int, temperature: float, key: Any, *, cached: bool = True,
           logits: Optional[List[np.ndarray]] = None) -> np.ndarray:
    """``n`` character ids drawn one at a time after ``prompt_ids``, each from
    ``softmax(logits / temperature)`` at the last position of the model's window.

    The window is the text from a start position on, at most ``context`` ids; when a
    new id would overflow it, it restarts at the last ``context // 2`` ids.  With
    ``cached`` (the default) the model runs through :func:`decode`: the window's ids
    once, then one new position per id (time per id proportional to the window's
    length); otherwise ``model.apply`` recomputes the whole window for every id
    (proportional to its square).  Both draw the same ids from the same logits (to
    float rounding); ``logits``, a list, receives the logits each id was drawn from.
    """
    ids = [int(i) for i in prompt_ids]
    start = max(0, len(ids) - context)

    def refill():
        out, caches = decode(model, params, state, {}, np.asarray([ids[start:]], np.int64), 0)
        return out[0, -1], caches

    if cached:
        last, caches = refill()
    for i in range(n):
        if not cached:
            last = model.apply(params, state, np.asarray([ids[start:]], np.int64))[0, -1]
        if logits is not None:
            logits.append(last)
        ids.append(int(fl.random.categorical(fl.random.fold_in(key, i), last / temperature)))
        if len(ids) - start > context:
            start = len(ids) - context // 2
            if cached and i < n - 1:
                last, caches = refill()
        elif cached and i < n - 1:
            out, caches = decode(model, params, state, caches,
                                 np.asarray([ids[-1:]], np.int64), len(ids) - 1 - start)
            last = out[0, -1]
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
    prompt_ids = np.array([lookup[c] for c in prompt])
    drawn, speed, logits = {}, {}, {}
    for way in ("cached", "recomputed"):
        logits[way] = []
        start = time.perf_counter()
        drawn[way] = sample(model, ts.params, ts.state, prompt_ids, sample_chars, context,
                            temperature, k_sample, cached=way == "cached", logits=logits[way])
        speed[way] = sample_chars / (time.perf_counter() - start)
    generated = "".join(alphabet[i] for i in drawn["cached"])
    same_text = bool(np.array_equal(drawn["cached"], drawn["recomputed"]))
    logit_diff = (max(float(np.abs(a - b).max()) for a, b in
                      zip(logits["cached"], logits["recomputed"])) if same_text else float("inf"))
    say(f"sample (temperature {temperature}):\n{prompt}{generated}")
    say(f"\nsampling: {speed['cached']:.0f} chars/s with the key/value cache, "
        f"{speed['recomputed']:.0f} chars/s recomputing the window for every character; "
        f"the same text: {same_text}, max |cached - recomputed logit| {logit_diff:.1e}")
    return {"history": history, "train_bits": train_bits, "val_bits": val_bits,
            "unigram_bits": baseline, "sample": generated,
            "sample_recomputed": "".join(alphabet[i] for i in drawn["recomputed"]),
            "logit_diff": logit_diff, "chars_per_second": speed, "seconds": seconds,
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
