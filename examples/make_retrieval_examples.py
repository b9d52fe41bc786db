"""Write the small synthetic query / gallery sets of the README's production-retrieval runs.

Two model versions (v1 old, v2 new and trained for compatibility: the same geometry, less noise, less
camera bias) of two toy retrieval systems:

- ``reid/``: re-identification. 100 identities seen by 6 cameras; every camera adds its own offset to
  what it sees, so an image of the same person from the same camera is an easy match (which the
  ``same-group`` exclusion removes, as Market-1501 and DukeMTMC-reID do). The gallery holds 8 images
  per identity and 200 distractors (people who are never queried); the 200 queries (2 per identity)
  are other images than the gallery's. Feature sets carry ``groups`` (the camera).
- ``landmarks/``: a relevance file instead of labels. 30 landmarks with 2 query images each; the
  database holds, per landmark, 6 clear views (positives), 4 hard ones (positives, further away)
  and 3 ambiguous ones (junk: neither right nor wrong), and 400 unrelated images. ``qrels.csv``
  lists the positives and the junk per query.

    python examples/make_retrieval_examples.py examples
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from compat.features import FeatureSet, save_features

DIM = 32
# Per model: how much of an image's own appearance (shared by both models), of the model's own noise and
# of the camera's bias reaches the feature.
VERSIONS = {"v1": (0.8, 0.6, 1.0), "v2": (0.7, 0.35, 0.6)}


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _save(out: Path, name: str, x: np.ndarray, labels, ids, version: str, groups=None) -> None:
    meta = {"model": f"toy-{version}", "version": version, "dataset": out.name, "split": name.split("-")[1]}
    print(save_features(FeatureSet.from_arrays(x, labels, ids, meta=meta, groups=groups), out / f"{name}.npz"))


def reid(out: Path, rng: np.random.Generator) -> None:
    people, cameras = 100, 6
    centres = _unit(rng.standard_normal((people + 200, DIM)))  # 200 distractor people, never queried
    bias = 0.7 * _unit(rng.standard_normal((cameras, DIM)))
    g_labels = np.concatenate([np.repeat(np.arange(people), 8), np.arange(people, people + 200)])
    q_labels = np.repeat(np.arange(people), 2)
    g_cams, q_cams = rng.integers(0, cameras, len(g_labels)), rng.integers(0, cameras, len(q_labels))
    draws = {part: rng.standard_normal((len(labels), DIM)) / np.sqrt(DIM)
             for part, labels in (("gallery", g_labels), ("query", q_labels))}
    for version, (shared, own, cam) in VERSIONS.items():
        for part, labels, cams, prefix in (("gallery", g_labels, g_cams, "g"), ("query", q_labels, q_cams, "q")):
            model_noise = rng.standard_normal((len(labels), DIM)) / np.sqrt(DIM)
            x = centres[labels] + cam * bias[cams] + shared * draws[part] + own * model_noise
            ids = np.array([f"{prefix}{i:04d}" for i in range(len(labels))])
            _save(out, f"{version}-{part}", x, labels, ids, version, groups=cams)


def landmarks(out: Path, rng: np.random.Generator) -> None:
    sites = 30
    centres = _unit(rng.standard_normal((sites, DIM)))
    spread = {"clear": (6, 1.0), "hard": (4, 1.6), "ambiguous": (3, 2.2)}  # images per site, offset scale
    labels, kinds = [], []
    for site in range(sites):
        for kind, (count, _) in spread.items():
            labels += [site] * count
            kinds += [kind] * count
    labels = np.array(labels + [-1] * 400)  # 400 unrelated images
    kinds = np.array(kinds + ["unrelated"] * 400)
    scale = np.array([spread[k][1] if k in spread else 0.0 for k in kinds])[:, None]
    offsets = _unit(rng.standard_normal((len(labels), DIM)))
    unrelated = _unit(rng.standard_normal((len(labels), DIM)))
    q_labels = np.repeat(np.arange(sites), 2)
    q_offsets = _unit(rng.standard_normal((len(q_labels), DIM)))
    g_ids = np.array([f"img{i:04d}" for i in range(len(labels))])
    q_ids = np.array([f"query{i:03d}" for i in range(len(q_labels))])
    for version, (_, noise, _) in VERSIONS.items():
        g = np.where(labels[:, None] >= 0, centres[np.maximum(labels, 0)] + scale * offsets, 1.4 * unrelated)
        g = g + 0.8 * noise * rng.standard_normal(g.shape) / np.sqrt(DIM)
        q = centres[q_labels] + q_offsets + 0.8 * noise * rng.standard_normal((len(q_labels), DIM)) / np.sqrt(DIM)
        _save(out, f"{version}-gallery", g, labels, g_ids, version)
        _save(out, f"{version}-query", q, q_labels, q_ids, version)
    rows = ["query_id,gallery_id,relevance"]
    for qi, site in enumerate(q_labels):
        for gi in np.flatnonzero(labels == site):
            rows.append(f"{q_ids[qi]},{g_ids[gi]},{'junk' if kinds[gi] == 'ambiguous' else 'positive'}")
    (out / "qrels.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    print(out / "qrels.csv")


def main(root: Path, *, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    for name, make in (("reid", reid), ("landmarks", landmarks)):
        (root / name).mkdir(parents=True, exist_ok=True)
        make(root / name, rng)


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "examples"))
