"""Deploy a fundl model: train the MNIST-1D CNN and GRU, export them to ONNX, run them
in ONNX Runtime.

The two models are those of ``examples/mnist1d.py`` (three strided conv1d layers;
a bidirectional GRU with 6 units per direction).  Each is trained briefly, written
to ``<out>/mnist1d_<model>.onnx`` by :func:`fundl.export.to_onnx` (eval mode, a
dynamic batch axis: input ``x`` ``(batch, 40)`` float32, output ``y`` ``(batch, 10)``
logits), loaded into an ``onnxruntime.InferenceSession`` and run on the 1000 test
sequences.  The script prints, per model, the ONNX ops in the graph, fundl's and
ONNX Runtime's test accuracies, how many predictions agree and the largest
difference between the two runtimes' logits.

Needs:  python3 -m pip install "fundl[onnx]" onnxruntime mnist1d
Run:    python3 examples/export_onnx.py            (2000 training steps per model)
        python3 examples/export_onnx.py --quick    (300 steps: a few seconds)
"""

from __future__ import annotations

import argparse
import os
import runpy
import sys
from collections import Counter

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
# the models and the training of examples/mnist1d.py (run as a file: that script sees to
# it that the `mnist1d` package, not itself, is what `import mnist1d` finds)
MNIST1D = runpy.run_path(os.path.join(HERE, "mnist1d.py"))
fl = MNIST1D["fl"]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="MNIST-1D models exported to ONNX")
    parser.add_argument("--quick", action="store_true", help="300 training steps per model")
    parser.add_argument("--steps", type=int, default=None, help="training steps (default 2000)")
    parser.add_argument("--out", default="onnx_models", help="folder for the .onnx files")
    args = parser.parse_args(argv)
    steps = args.steps or (300 if args.quick else 2000)
    try:
        import onnxruntime as ort
        from fundl.export import to_onnx
        import onnx  # noqa: F401  (to_onnx needs it)
    except ImportError as err:
        print(f"this example needs onnx and onnxruntime ({err}): "
              'python3 -m pip install "fundl[onnx]" onnxruntime')
        return 1

    data = MNIST1D["fl"].datasets.mnist1d()
    _, (x_test, y_test) = data
    os.makedirs(args.out, exist_ok=True)
    print(f"MNIST-1D, {steps} training steps per model; ONNX Runtime {ort.__version__}\n")
    worst = 0.0
    for name in ("cnn", "gru"):
        model, ts, _, seconds = MNIST1D["train_one"](name, 0, data, steps)
        path = os.path.join(args.out, f"mnist1d_{name}.onnx")
        proto = to_onnx(model, ts.params, ts.state, in_shape=(40,), path=path)

        session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
        (logits_onnx,) = session.run(None, {"x": x_test})
        logits = model.apply(ts.params, ts.state, x_test)
        difference = float(np.abs(logits_onnx - logits).max())
        relative = difference / float(np.abs(logits).max())
        worst = max(worst, relative)
        agree = float(np.mean(logits_onnx.argmax(-1) == logits.argmax(-1)))
        ops = Counter(node.op_type for node in proto.graph.node)
        print(f"{name}: trained in {seconds:.1f} s, exported to {path} "
              f"({os.path.getsize(path) / 1024:.0f} KB)")
        listed = ", ".join(f"{op} x{n}" if n > 1 else op for op, n in sorted(ops.items()))
        print(f"  ONNX ops: {listed}")
        print(f"  test accuracy: fundl {100 * np.mean(logits.argmax(-1) == y_test):.1f}%, "
              f"ONNX Runtime {100 * np.mean(logits_onnx.argmax(-1) == y_test):.1f}%; "
              f"predictions agree on {100 * agree:.1f}%")
        print(f"  max |onnx - fundl| over the {len(x_test)} test logits: {difference:.2e} "
              f"({relative:.1e} of the largest logit)\n")
    print(f"worst relative difference: {worst:.1e}")
    return 0 if worst < 1e-5 else 1


if __name__ == "__main__":
    sys.exit(main())
