"""What 5x unequal tasks cost the default photo head, offline, with the data held fixed.

    python -m benchmarks.unequal_heads

cifar10-mini on the service's default photo backbone (EfficientNet-Lite0's fp32 graph, the features
``benchmarks.gate_truth.photo_features`` computes from exactly the photos a stream sends), 100 test photos a
class, the classes in ``gate_truth``'s five tasks of two. Three sets of training photos:

- ``equal``: every class with all of its photos (500);
- ``unequal`` (``cifar-5x2u``): the first task's two classes with their first 100 photos, the others whole;
- ``fifth`` (``cifar-5x2f``): every class with its first 100 (the unequal stream's first task, and the rest as small).

For each, the default head's solution (``model_core.strategies.analytic``: the class-balanced sums, the ridge
chosen by generalised cross-validation; what the service's `analytic` reaches after the last task, since its sums
are order-independent, but fitted here on every training photo, where the service holds 20% out), scored on all
ten classes and on the first task's two. Beside it, the same head with a leave-one-out correction of each class's
score, tried and not kept: a class of n_c samples at weight m / n_c has a mean leverage of about h_c = dof / (U
n_c) (dof: the ridge's degrees of freedom, U classes), so its own samples' fitted score ``yhat_c`` overstates a new
sample's by about h_c (1 - yhat_c) / (1 - h_c), which is added back to its logit. Prints a table; no service runs.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from benchmarks.gate_truth import Stream, load_stream, photo_features, unequal_rows
from model_core.strategies.analytic import balanced_sums, ridge_dof, solve_ridge


def fit(x: np.ndarray, y: np.ndarray, classes: list[str]) -> tuple[torch.Tensor, np.ndarray]:
    """(the balanced ridge head's weights (D+1, U), the leave-one-out offsets of its classes' logits)."""
    h = torch.tensor(np.hstack([x, np.ones((len(x), 1))]), dtype=torch.float64)
    t = torch.zeros(len(x), len(classes), dtype=torch.float64)
    t[torch.arange(len(x)), torch.tensor([classes.index(lab) for lab in y])] = 1
    cross = h.T @ t
    g, c, n = balanced_sums(h.T @ h, cross)
    w, rel = solve_ridge(g, c, n)
    dof = ridge_dof(g, n, rel)
    counts = cross[-1].numpy()
    fitted = np.einsum("du,du->u", (cross / cross[-1]).numpy(), w.numpy())  # each class's mean own score
    lev = np.minimum(dof / (len(classes) * counts), 0.99)
    return w, lev * (1 - fitted) / (1 - lev)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--test-per-class", type=int, default=100)
    args = parser.parse_args()
    stream = load_stream("cifar-5x2", args.test_per_class)
    if isinstance(stream, str):
        raise SystemExit(stream)
    assert isinstance(stream, Stream)
    xtr, ytr, xte, yte = photo_features(stream)
    classes = [c for task in stream.tasks for c in task]
    first = np.isin(yte, stream.tasks[0])
    labels = [str(lab) for lab in ytr]  # in the order the stream sends them, as gate_truth's u and f streams cut them
    rows = {"equal": list(range(len(labels))), "unequal": unequal_rows(labels, stream.tasks[0]),
            "fifth": unequal_rows(labels, stream.tasks[0], every_task=True)}  # fmt: skip
    h_test = torch.tensor(np.hstack([xte, np.ones((len(xte), 1))]), dtype=torch.float64)
    print("| training photos | photos | accuracy | first task's classes | with the leave-one-out offsets | first task's |")
    print("|---|---|---|---|---|---|")
    for name, keep in rows.items():
        w, offsets = fit(xtr[keep], ytr[keep], classes)
        logits = (h_test @ w).numpy()
        out = [f"| {name} | {len(keep)}"]
        for z in (logits, logits + offsets):
            right = np.array(classes)[z.argmax(1)] == yte
            out.append(f"{right.mean():.3f} | {right[first].mean():.3f}")
        print(" | ".join(out) + " |")


if __name__ == "__main__":
    main()
