# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Compatible training in your own PyTorch loop: the d-Simplex head and the BCT loss
#
# compat's recipes (`compat train`) are one way to train compatible models. This walkthrough takes
# the other: a plain PyTorch model and training loop of your own, with two pieces of compat dropped
# in, then compat's evaluator to check the result.
#
# - **d-Simplex head** (`compat.models.SimplexHead`, CoReS): a fixed classifier whose class vectors
#   are the vertices of a regular simplex. Every version trained against the same simplex lands in
#   the same feature space, so a new model's queries can search an old model's gallery. Nothing of
#   the old model is needed at training time.
# - **BCT loss** (`compat.methods.influence_loss` / `compat.methods.BCT`): the new model's features
#   are also scored by the old model's frozen classifier, which ties them to the old feature space.
#   It works with any old model that has a classifier.
#
# On the MNIST subset shipped with compat (`mnist-mini`: 5,000 training and 1,000 test images), we
# train an old model on 30% of the training images and three new models on all of them: with the
# d-Simplex head, with the BCT loss, and independently (the negative control). Set
# `COMPAT_NOTEBOOK_TINY=1` for a seconds-long smoke run on a sliver of the data.

# %%
import os

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Subset

from compat.compatibility import Version, evaluate_chain
from compat.compatibility.report import render_markdown
from compat.data import build_dataset, fraction_subsets
from compat.gate import load_policy, run_gate
from compat.methods import BCT, influence_loss
from compat.models import LinearHead, SimplexHead, SmallCNN, d_simplex, embed_dataset, extract_features
from compat.retrieval import RetrievalEvaluator

TINY = os.environ.get("COMPAT_NOTEBOOK_TINY") == "1"
OLD_FRACTION, NEW_FRACTION = (0.02, 0.06) if TINY else (0.3, 1.0)
EPOCHS = 1 if TINY else 3
TEST_ITEMS = 200 if TINY else None  # None: the whole test split
FEATURE_DIM = 9  # the simplex of 10 classes lives in 10 - 1 dimensions
SEED = 0
torch.manual_seed(SEED)

# %% [markdown]
# ## Data
#
# `build_dataset` returns torchvision-style datasets whose labels and item ids are known up front;
# `fraction_subsets` cuts nested, class-stratified subsets: the old model's images are a subset of
# the new models' ones (the data-growth upgrade).

# %%
train_set = build_dataset("mnist-mini", split="train", train_transform=True)
test_set = build_dataset("mnist-mini", split="test", train_transform=False)
old_items, new_items = fraction_subsets(train_set.labels, [OLD_FRACTION, NEW_FRACTION], seed=SEED)
test_items = np.arange(len(test_set)) if TEST_ITEMS is None else np.arange(TEST_ITEMS)
print(f"old model: {len(old_items)} training images, new models: {len(new_items)}, test: {len(test_items)}")

# %% [markdown]
# ## Your model
#
# Any network that maps images to a feature vector will do; compat's evaluator only asks for an
# `embed(images) -> (N, D)` method. Here a small CNN, a linear projection to D = 9, and a classifier
# head that we choose per model.


# %%
class Net(nn.Module):
    def __init__(self, head: nn.Module):
        super().__init__()
        self.backbone = SmallCNN()  # (N, 1, 28, 28) -> (N, 128)
        self.project = nn.Linear(SmallCNN.out_dim, FEATURE_DIM, bias=False)
        self.head = head

    def embed(self, images):
        """(N, 1, 28, 28) -> (N, D) retrieval features."""
        return self.project(self.backbone(images))

    def forward(self, images):
        features = self.embed(images)
        return features, self.head(features)


# %% [markdown]
# ## The d-Simplex head
#
# `d_simplex(K)` gives K unit vectors in K - 1 dimensions with equal pairwise cosines `-1 / (K - 1)`.
# `SimplexHead(K)` uses them as a classifier that is never trained: it has no parameters (vertices
# and the label -> vertex map are buffers, saved in the state dict).

# %%
vertices = d_simplex(10)
cosines = vertices @ vertices.T
print("vertices:", tuple(vertices.shape), " off-diagonal cosines:", round(float(cosines[0, 1]), 4), "= -1/9")
head = SimplexHead(10)
print("trainable parameters of the head:", sum(p.numel() for p in head.parameters()))
print("classifier rows in label order (what an old model's classifier looks like to BCT):", tuple(head.weight.shape))

# %% [markdown]
# ## A plain training loop
#
# Nothing compat-specific: SGD with a cosine schedule over a DataLoader. The loss is a function of
# the model's output and the labels, so that each model below only changes the loss.


# %%
def train(model, items, loss_fn, *, seed):
    torch.manual_seed(seed)
    loader = DataLoader(Subset(train_set, items.tolist()), batch_size=64, shuffle=True,
                        generator=torch.Generator().manual_seed(seed))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True, weight_decay=5e-4)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=EPOCHS * len(loader))
    model.train()
    for _ in range(EPOCHS):
        for images, labels in loader:
            loss = loss_fn(model(images), labels)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
    return model.eval()


def cross_entropy(output, labels):
    _, logits = output
    return F.cross_entropy(logits, labels)


# %% [markdown]
# ## The old model (in production) and the d-Simplex new model
#
# Both are trained from scratch with plain cross-entropy against the same fixed simplex; the new one
# sees all the data. Neither training run looks at the other model.

# %%
torch.manual_seed(SEED)
old = train(Net(SimplexHead(10)), old_items, cross_entropy, seed=SEED)
torch.manual_seed(SEED + 1)
new_simplex = train(Net(SimplexHead(10)), new_items, cross_entropy, seed=SEED + 1)

# %% [markdown]
# ## The BCT new model
#
# This one has an ordinary learnable head. Its loss adds the **influence loss**: cross-entropy of
# the new features through the old model's frozen classifier `W_old` (here the old model's simplex
# rows, but any linear classifier works). `influence_loss(features, labels, W_old)` is the function;
# `BCT` wraps it with the new model's own cross-entropy and builds `W_old` rows for classes the old
# model never saw (from the old model's class means) when the new data brings new classes.

# %%
old_weight = old.head.weight.detach()
ALPHA = 1.0


def bct_loss(output, labels):
    features, logits = output
    return F.cross_entropy(logits, labels) + ALPHA * influence_loss(features, labels, old_weight)


# The same loss through the BCT method object, checked on one batch.
bct = BCT(alpha=ALPHA)
bct.prepare(n_old_classes=10, n_new_classes=10, old_model=old, old_classes=list(range(10)),
            old_train_features=embed_dataset(old, train_set, indices=new_items),
            train_labels=torch.from_numpy(train_set.labels[new_items]))
images, labels = next(iter(DataLoader(Subset(train_set, new_items[:32].tolist()), batch_size=32)))
probe = Net(LinearHead(FEATURE_DIM, 10))
with torch.no_grad():
    features, logits = probe(images)
    assert torch.allclose(bct.loss(features, logits, labels).total, bct_loss((features, logits), labels), atol=1e-5)

torch.manual_seed(SEED + 2)
new_bct = train(Net(LinearHead(FEATURE_DIM, 10)), new_items, bct_loss, seed=SEED + 2)

# %% [markdown]
# ## The negative control: an independent new model
#
# Same architecture and data as the BCT model, plain cross-entropy, no tie to the old model.

# %%
torch.manual_seed(SEED + 3)
new_independent = train(Net(LinearHead(FEATURE_DIM, 10)), new_items, cross_entropy, seed=SEED + 3)

# %% [markdown]
# ## Evaluate with compat
#
# `extract_features` embeds the test images into a `FeatureSet` (features, labels, item ids, meta).
# `RetrievalEvaluator` is configured once; `evaluate(query=..., gallery=...)` gives one cell
# (leave-one-out by item id: a query never finds itself), and `evaluate_chain` the whole
# lower-triangular matrix of a version chain with its summaries.

# %%
test_subset = Subset(test_set, test_items.tolist())
test_labels, test_ids = test_set.labels[test_items], test_set.ids[test_items]


def features_of(model, version):
    return extract_features(model, test_subset, labels=test_labels, ids=test_ids,
                            meta={"version": version, "dataset": "mnist-mini", "split": "test"})


features = {name: features_of(model, name) for name, model in
            (("old", old), ("d-simplex", new_simplex), ("bct", new_bct), ("independent", new_independent))}
evaluator = RetrievalEvaluator(metrics=("cmc@1", "cmc@5", "map"), similarity="cosine")

cell = evaluator.evaluate(query=features["d-simplex"], gallery=features["old"])
print(f"d-simplex queries on the old gallery: CMC@1 {cell['cmc@1']:.3f}, mAP {cell['map']:.3f}")

reports = {name: evaluate_chain([Version("old", features["old"]), Version(name, features[name])], evaluator)
           for name in ("d-simplex", "bct", "independent")}
print(render_markdown(reports["d-simplex"]))

# %% [markdown]
# The three upgrades side by side. The empirical compatibility criterion asks that the new model's
# queries on the old gallery beat the old model on its own gallery: `new/old > old/old`.

# %%
print("| new model | old/old | new/old | new/new | compatible (CMC@1) |")
print("|---|---:|---:|---:|---|")
for name, report in reports.items():
    m = report.matrices["cmc@1"]
    ok = report.summary["cmc@1"].ecc[1][0]
    print(f"| {name} | {100 * m[0][0]:.2f} | {100 * m[1][0]:.2f} | {100 * m[1][1]:.2f} | {'yes' if ok else 'no'} |")

# %% [markdown]
# ## Would the CI gate let them through?
#
# The gate decides on paired bootstrap confidence intervals over the queries, so a model only
# passes when it is compatible beyond noise (default policy: `configs/gate/default.yaml`). On the
# tiny smoke-run settings the models are barely trained and the verdicts mean nothing.

# %%
policy = load_policy()
for name in ("d-simplex", "bct", "independent"):
    verdict = run_gate(features["old"], features[name], policy, n_resamples=200 if TINY else 2000, seed=SEED)
    checks = ", ".join(f"{c.name} {'✓' if c.passed else '✗'}" for c in verdict.checks if not c.skipped)
    print(f"{name}: {'PASSED' if verdict.passed else 'FAILED'} ({checks})")
