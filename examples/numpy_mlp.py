"""Train a small MLP on scikit-learn's handwritten digits with NumPy and adamcore.AdamW.

Forward and backward passes are plain NumPy in float32; adamcore updates the weights
in place, one native call per step for all four arrays. No torch involved.

    python examples/numpy_mlp.py                 # 40 epochs, about 97% test accuracy
    python examples/numpy_mlp.py --epochs 10 --json

The data set (1,797 8x8 images, 10 classes) ships with scikit-learn, so nothing is
downloaded. A stratified 25% of it is held out as the test set.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np

import adamcore
from adamcore.schedule import WarmupCosine


def load_digits_split(seed: int):
    """(x_train, y_train, x_test, y_test): float32 pixels scaled to [0, 1], int labels."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = (digits.data / 16.0).astype(np.float32)
    return tuple(train_test_split(x, digits.target, test_size=0.25, stratify=digits.target,
                                  random_state=seed)[i] for i in (0, 2, 1, 3))


class MLP:
    """inputs -> hidden (ReLU) -> classes, with He-initialised float32 weights."""

    def __init__(self, inputs: int, hidden: int, classes: int, rng: np.random.Generator) -> None:
        self.w1 = (rng.standard_normal((inputs, hidden)) * np.sqrt(2.0 / inputs)).astype(np.float32)
        self.b1 = np.zeros(hidden, np.float32)
        self.w2 = (rng.standard_normal((hidden, classes)) * np.sqrt(2.0 / hidden)).astype(np.float32)
        self.b2 = np.zeros(classes, np.float32)

    def parameters(self):
        """The weight arrays, in the order the gradients come in."""
        return [self.w1, self.b1, self.w2, self.b2]

    def logits(self, x: np.ndarray) -> np.ndarray:
        """Unnormalised class scores for a batch."""
        return np.maximum(x @ self.w1 + self.b1, 0.0) @ self.w2 + self.b2

    def loss_and_grads(self, x: np.ndarray, y: np.ndarray):
        """Mean softmax cross-entropy over the batch and its gradients (same order as parameters)."""
        pre = x @ self.w1 + self.b1
        hidden = np.maximum(pre, 0.0)
        logits = hidden @ self.w2 + self.b2
        logits -= logits.max(axis=1, keepdims=True)
        probs = np.exp(logits)
        probs /= probs.sum(axis=1, keepdims=True)
        rows = np.arange(len(y))
        loss = float(-np.log(probs[rows, y] + 1e-12).mean())
        delta = probs
        delta[rows, y] -= 1.0
        delta /= np.float32(len(y))
        grad_w2 = hidden.T @ delta
        grad_b2 = delta.sum(axis=0)
        back = (delta @ self.w2.T) * (pre > 0)
        grad_w1 = x.T @ back
        grad_b1 = back.sum(axis=0)
        return loss, [grad_w1, grad_b1, grad_w2, grad_b2]

    def accuracy(self, x: np.ndarray, y: np.ndarray) -> float:
        """Fraction of the batch classified correctly."""
        return float((self.logits(x).argmax(axis=1) == y).mean())


def train(epochs: int = 40, hidden: int = 128, batch_size: int = 32, lr: float = 3e-3,
          weight_decay: float = 1e-4, seed: int = 0, verbose: bool = True) -> dict:
    """Train and return the final figures (test accuracy, losses, timings)."""
    x_train, y_train, x_test, y_test = load_digits_split(seed)
    rng = np.random.default_rng(seed)
    model = MLP(x_train.shape[1], hidden, 10, rng)
    steps_per_epoch = -(-len(x_train) // batch_size)
    schedule = WarmupCosine(lr, warmup_steps=steps_per_epoch, total_steps=epochs * steps_per_epoch,
                            final_lr=lr / 100)
    optimizer = adamcore.AdamW(model.parameters(), lr=schedule, weight_decay=weight_decay)
    epoch_losses = []
    step_seconds = []
    start = time.perf_counter()
    for epoch in range(1, epochs + 1):
        order = rng.permutation(len(x_train))
        total = 0.0
        for first in range(0, len(order), batch_size):
            batch = order[first:first + batch_size]
            loss, grads = model.loss_and_grads(x_train[batch], y_train[batch])
            t0 = time.perf_counter()
            optimizer.step(grads)
            step_seconds.append(time.perf_counter() - t0)
            total += loss * len(batch)
        epoch_losses.append(total / len(order))
        if verbose and (epoch % 5 == 0 or epoch in (1, epochs)):
            print(f"epoch {epoch:3d}  train loss {epoch_losses[-1]:.4f}  "
                  f"test accuracy {model.accuracy(x_test, y_test):.4f}")
    return {
        "test_accuracy": model.accuracy(x_test, y_test),
        "train_accuracy": model.accuracy(x_train, y_train),
        "final_train_loss": epoch_losses[-1],
        "epoch_losses": epoch_losses,
        "epochs": epochs,
        "steps": len(step_seconds),
        "median_step_us": float(np.median(step_seconds) * 1e6),
        "seconds": time.perf_counter() - start,
        "isa": adamcore.get_isa(),
    }


def main(argv=None) -> int:
    """Command line: train, print the figures; exit 1 if --min-accuracy is missed."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=3e-3, help="peak learning rate")
    parser.add_argument("--weight-decay", type=float, default=1e-4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--min-accuracy", type=float, default=None,
                        help="exit with status 1 if the test accuracy ends below this")
    parser.add_argument("--json", action="store_true", help="print the results as JSON only")
    args = parser.parse_args(argv)
    results = train(args.epochs, args.hidden, args.batch_size, args.lr, args.weight_decay, args.seed,
                    verbose=not args.json)
    if args.json:
        print(json.dumps(results))
    else:
        print(f"test accuracy {results['test_accuracy']:.4f} after {results['epochs']} epochs "
              f"({results['steps']} AdamW steps, median {results['median_step_us']:.1f} us per step, "
              f"{results['seconds']:.1f} s in all)")
    if args.min_accuracy is not None and results["test_accuracy"] < args.min_accuracy:
        print(f"test accuracy {results['test_accuracy']:.4f} is below {args.min_accuracy}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
