"""Models: d-Simplex geometry, heads, backbone registry, pretrained loading, the embedding model."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from compat.errors import CompatError
from compat.models import (
    EmbeddingModel,
    LinearHead,
    ModelOutput,
    SimplexHead,
    build_backbone,
    build_model,
    d_simplex,
    list_backbones,
)

# --- d-Simplex ---------------------------------------------------------------------------------


@pytest.mark.parametrize("k", [2, 3, 10, 100, 1024])
def test_d_simplex_has_unit_rows_equal_angles_and_full_rank(k: int) -> None:
    vertices = d_simplex(k)
    assert vertices.shape == (k, k - 1)
    assert vertices.dtype == torch.float32
    v = vertices.double()
    torch.testing.assert_close(v.norm(dim=1), torch.ones(k, dtype=torch.float64), atol=1e-6, rtol=0)
    gram = v @ v.T
    off_diagonal = gram[~torch.eye(k, dtype=torch.bool)]
    torch.testing.assert_close(off_diagonal, torch.full_like(off_diagonal, -1.0 / (k - 1)), atol=1e-6, rtol=0)
    # A centred regular simplex is a tight frame: V^T V = K/(K-1) I_{K-1}, which has full rank K - 1.
    frame = v.T @ v
    torch.testing.assert_close(frame, k / (k - 1) * torch.eye(k - 1, dtype=torch.float64), atol=1e-5, rtol=0)
    if k <= 100:  # the SVD for K = 1024 takes seconds; the tight-frame identity above already proves the rank
        assert torch.linalg.matrix_rank(v).item() == k - 1


def test_d_simplex_matches_the_construction_by_hand_for_three_vertices() -> None:
    # I_2 and a last row of (1 - sqrt 3) / 2; centre the columns; normalise: an equilateral triangle.
    c = (1 - 3**0.5) / 2
    rows = torch.tensor([[1.0, 0.0], [0.0, 1.0], [c, c]], dtype=torch.float64)
    rows -= rows.mean(dim=0)
    rows /= rows.norm(dim=1, keepdim=True)
    assert torch.equal(d_simplex(3), rows.float())
    assert torch.equal(d_simplex(3), d_simplex(3))


@pytest.mark.parametrize("bad", [1, 0, -3, 2.0, True])
def test_d_simplex_rejects_fewer_than_two_vertices(bad: object) -> None:
    with pytest.raises(CompatError, match="num_vertices"):
        d_simplex(bad)  # type: ignore[arg-type]


# --- SimplexHead -------------------------------------------------------------------------------


def test_simplex_head_default_map_is_last_vertex_down() -> None:
    head = SimplexHead(1024, num_classes=10)
    assert head.label_to_vertex.tolist() == [1023 - y for y in range(10)]
    assert head.num_classes == 10 and head.in_dim == 1023 and head.num_free_vertices == 1014
    assert torch.equal(head.weight, d_simplex(1024)[[1023 - y for y in range(10)]])


def test_simplex_head_is_fixed_and_its_buffers_are_in_the_state_dict() -> None:
    head = SimplexHead(5, num_classes=3)
    assert list(head.parameters()) == []
    state = head.state_dict()
    assert set(state) == {"vertices", "label_to_vertex"}
    assert state["label_to_vertex"].dtype == torch.long


def test_simplex_head_logits_are_features_times_vertices_by_hand() -> None:
    head = SimplexHead(3, label_to_vertex=[1, 2, 0])
    v = d_simplex(3)
    features = torch.tensor([[1.0, 2.0], [-3.0, 0.5]])
    expected = torch.tensor(
        [[features[n] @ v[vertex] for vertex in (1, 2, 0)] for n in range(2)],
    )
    torch.testing.assert_close(head(features), expected, atol=1e-6, rtol=0)
    # Unnormalised: scaling the feature scales the logits.
    torch.testing.assert_close(head(10 * features), 10 * expected, atol=1e-5, rtol=0)


def test_simplex_head_logits_work_with_cross_entropy_on_integer_labels() -> None:
    head = SimplexHead(8, num_classes=4)
    features = 20 * head.weight.clone()  # each label's own vertex
    logits = head(features)
    assert logits.shape == (4, 4)
    assert logits.argmax(dim=1).tolist() == [0, 1, 2, 3]
    assert nn.functional.cross_entropy(logits, torch.arange(4)).item() < 1e-6


def test_simplex_head_add_classes_extends_without_touching_old_labels() -> None:
    head = SimplexHead(6, num_classes=2)
    before = head.weight.clone()
    new = head.add_classes(3)
    assert new.tolist() == [3, 2, 1]
    assert head.label_to_vertex.tolist() == [5, 4, 3, 2, 1]
    assert torch.equal(head.weight[:2], before)
    assert head(torch.randn(4, 5)).shape == (4, 5)
    head.add_classes(1)
    with pytest.raises(CompatError, match="free"):
        head.add_classes(1)


def test_simplex_head_add_classes_fills_the_highest_free_vertices_of_a_custom_map() -> None:
    head = SimplexHead(5, label_to_vertex=[4, 1])
    assert head.add_classes(2).tolist() == [3, 2]
    assert head.label_to_vertex.tolist() == [4, 1, 3, 2]
    with pytest.raises(CompatError, match="only 1 of 5"):
        head.add_classes(2)


def test_simplex_head_grown_map_round_trips_through_the_state_dict() -> None:
    head = SimplexHead(10, num_classes=3)
    head.add_classes(2)
    restored = SimplexHead(10, num_classes=5)
    restored.load_state_dict(head.state_dict())
    assert torch.equal(restored.label_to_vertex, head.label_to_vertex)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"num_classes": 11}, "do not fit"),
        ({"label_to_vertex": [0, 0]}, "share a vertex"),
        ({"label_to_vertex": [0, 10]}, r"\[0, 10\)"),
        ({"label_to_vertex": [0.5, 1.0]}, "integer"),
        ({"label_to_vertex": [1, 2], "num_classes": 3}, "does not match"),
    ],
)
def test_simplex_head_rejects_bad_maps(kwargs: dict, match: str) -> None:
    with pytest.raises(CompatError, match=match):
        SimplexHead(10, **kwargs)


# --- LinearHead --------------------------------------------------------------------------------


@pytest.mark.parametrize("bias", [False, True])
def test_linear_head_grow_keeps_old_rows_exactly(bias: bool) -> None:
    head = LinearHead(6, 3, bias=bias, generator=torch.Generator().manual_seed(0))
    old_weight = head.weight.detach().clone()
    old_bias = None if head.bias is None else head.bias.detach().clone()
    assert head.grow(5, generator=torch.Generator().manual_seed(1)) is head
    assert head.num_classes == 5 and head.weight.shape == (5, 6)
    assert torch.equal(head.weight[:3], old_weight)
    assert isinstance(head.weight, nn.Parameter) and head.weight.requires_grad
    if bias:
        assert head.bias is not None and head.bias.shape == (5,)
        assert torch.equal(head.bias[:3], old_bias)
    features = torch.randn(2, 6)
    assert head(features).shape == (2, 5)


def test_linear_head_new_rows_are_deterministic_given_a_generator() -> None:
    def grown() -> torch.Tensor:
        head = LinearHead(4, 2, generator=torch.Generator().manual_seed(0))
        return head.grow(4, generator=torch.Generator().manual_seed(7)).weight.detach()

    first, second = grown(), grown()
    assert torch.equal(first, second)
    assert not torch.equal(first[2:], torch.zeros(2, 4))
    assert first[2:].abs().max() <= 0.5  # 1 / sqrt(in_dim)


def test_linear_head_cannot_shrink() -> None:
    with pytest.raises(CompatError, match="shrink"):
        LinearHead(4, 3).grow(2)


# --- backbones ---------------------------------------------------------------------------------

_BACKBONE_CASES = {
    "smallcnn": ({}, (1, 28, 28), 128, 4),
    "mlp": ({"hidden": 64}, (1, 28, 28), 64, 4),
    "resnet32_cifar": ({}, (3, 32, 32), 64, 4),
    "resnet18": ({"small_images": True, "in_channels": 1}, (1, 28, 28), 512, 2),
    "resnet34": ({"small_images": True, "in_channels": 1}, (1, 28, 28), 512, 2),
    "resnet50": ({"small_images": True, "in_channels": 1}, (1, 28, 28), 2048, 2),
}


def test_backbone_cases_cover_the_registry() -> None:
    assert set(_BACKBONE_CASES) == set(list_backbones())


@pytest.mark.parametrize("name", sorted(_BACKBONE_CASES))
def test_every_backbone_maps_images_to_flat_features(name: str) -> None:
    kwargs, image_shape, out_dim, batch = _BACKBONE_CASES[name]
    torch.manual_seed(0)
    backbone = build_backbone(name, **kwargs)
    assert backbone.out_dim == out_dim
    with torch.no_grad():
        features = backbone.eval()(torch.randn(batch, *image_shape))
    assert features.shape == (batch, out_dim)
    assert torch.isfinite(features).all()


def test_resnet32_cifar_has_32_layers_and_projection_shortcuts() -> None:
    backbone = build_backbone("resnet32_cifar")
    convs = [m for m in backbone.modules() if isinstance(m, nn.Conv2d)]
    shortcut_convs = [m for m in convs if m.kernel_size == (1, 1)]
    assert len(convs) - len(shortcut_convs) == 31  # + the final linear layer of a classifier = 32
    assert len(shortcut_convs) == 2


def test_small_images_stem_is_3x3_stride_1_without_max_pool() -> None:
    backbone = build_backbone("resnet18", small_images=True, in_channels=1)
    assert backbone.conv1.kernel_size == (3, 3) and backbone.conv1.stride == (1, 1)
    assert backbone.conv1.in_channels == 1
    assert isinstance(backbone.maxpool, nn.Identity) and isinstance(backbone.fc, nn.Identity)


def test_unknown_backbone_lists_choices_and_closest_match() -> None:
    with pytest.raises(CompatError) as info:
        build_backbone("resnt18")
    message = str(info.value)
    assert all(name in message for name in list_backbones())
    assert "did you mean 'resnet18'" in message


def test_unknown_backbone_option_is_an_error() -> None:
    with pytest.raises(CompatError, match="small_image"):
        build_backbone("resnet18", small_image=True)


def test_pretrained_weights_round_trip_from_a_local_file(tmp_path) -> None:
    torch.manual_seed(0)
    source = build_backbone("resnet18", small_images=True, in_channels=1)
    state = source.state_dict()
    state["fc.weight"] = torch.zeros(1000, 512)  # a torchvision checkpoint's classifier is ignored
    path = tmp_path / "r18.pt"
    torch.save(state, path)
    torch.manual_seed(1)
    loaded = build_backbone("resnet18", small_images=True, in_channels=1, pretrained=str(path))
    for key, value in source.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key


def test_pretrained_weights_that_do_not_match_raise(tmp_path) -> None:
    path = tmp_path / "r18.pt"
    torch.save(build_backbone("resnet18", small_images=True, in_channels=1).state_dict(), path)
    with pytest.raises(CompatError, match="wrong shape: conv1.weight"):
        build_backbone("resnet18", pretrained=str(path))  # 7x7 RGB stem
    with pytest.raises(CompatError, match="missing"):
        build_backbone("resnet34", small_images=True, in_channels=1, pretrained=str(path))
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(CompatError, match="cannot load"):
        build_backbone("resnet18", pretrained=str(garbage))
    with pytest.raises(CompatError, match="cannot load"):
        build_backbone("resnet18", pretrained=str(tmp_path / "absent.pt"))


# --- EmbeddingModel ----------------------------------------------------------------------------


def test_build_model_with_simplex_head_gives_features_and_logits() -> None:
    model = build_model("smallcnn", feature_dim=19, head="simplex", num_classes=10, num_vertices=20)
    assert isinstance(model, EmbeddingModel) and isinstance(model.head, SimplexHead)
    assert model.feature_dim == 19 and model.num_classes == 10
    images = torch.randn(3, 1, 28, 28)
    out = model.eval()(images)
    assert isinstance(out, ModelOutput)
    assert out.features.shape == (3, 19) and out.logits.shape == (3, 10)
    torch.testing.assert_close(model.embed(images), out.features)
    torch.testing.assert_close(out.logits, out.features @ model.head.weight.T)
    assert model.head.label_to_vertex.tolist() == [19 - y for y in range(10)]


@pytest.mark.parametrize(
    ("feature_dim", "num_vertices"),
    [(10, None), (None, None), (9, 20), (1023, 5)],
)
def test_build_model_requires_feature_dim_k_minus_1_for_the_simplex_head(feature_dim, num_vertices) -> None:
    with pytest.raises(CompatError, match="feature_dim|num_vertices"):
        build_model("smallcnn", feature_dim=feature_dim, head="simplex", num_classes=10, num_vertices=num_vertices)


def test_build_model_linear_head_and_identity_projection() -> None:
    model = build_model("smallcnn", feature_dim=None, head="linear", num_classes=7)
    assert isinstance(model.projection, nn.Identity) and isinstance(model.head, LinearHead)
    assert model.feature_dim == 128 and model.head.weight.shape == (7, 128)
    out = model(torch.randn(2, 1, 28, 28))
    assert out.features.shape == (2, 128) and out.logits.shape == (2, 7)


def test_build_model_rejects_bad_options() -> None:
    with pytest.raises(CompatError, match="head"):
        build_model("smallcnn", feature_dim=9, head="cosine", num_classes=10)
    with pytest.raises(CompatError, match="num_vertices"):
        build_model("smallcnn", feature_dim=9, head="linear", num_classes=10, num_vertices=10)
    with pytest.raises(CompatError, match="backbone: unknown name .nope.; expected one of"):
        build_model("nope", feature_dim=9, head="simplex", num_classes=10)


def test_projection_is_bias_free_and_simplex_is_not_trained() -> None:
    model = build_model("smallcnn", feature_dim=9, head="simplex", num_classes=10)
    assert model.projection.bias is None
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert not any(name.startswith("head.") for name in trainable)
    assert "head.vertices" in model.state_dict() and "head.label_to_vertex" in model.state_dict()


@pytest.mark.parametrize("head", ["simplex", "linear"])
def test_state_dict_round_trip_reproduces_outputs_exactly(tmp_path, head: str) -> None:
    torch.manual_seed(0)
    model = build_model("smallcnn", feature_dim=9, head=head, num_classes=10)
    # A few optimiser steps so that BatchNorm statistics and weights differ from a fresh init.
    optimiser = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(2):
        out = model(torch.randn(8, 1, 28, 28))
        nn.functional.cross_entropy(out.logits, torch.randint(0, 10, (8,))).backward()
        optimiser.step()
        optimiser.zero_grad()
    path = tmp_path / "model.pt"
    torch.save(model.state_dict(), path)
    torch.manual_seed(1)
    restored = build_model("smallcnn", feature_dim=9, head=head, num_classes=10)
    restored.load_state_dict(torch.load(path, weights_only=True))
    images = torch.randn(4, 1, 28, 28)
    expected, actual = model.eval()(images), restored.eval()(images)
    assert torch.equal(expected.features, actual.features)
    assert torch.equal(expected.logits, actual.logits)


def test_embedding_model_checks_the_head_dimension() -> None:
    with pytest.raises(CompatError, match="head"):
        EmbeddingModel(build_backbone("smallcnn"), LinearHead(10, 3), feature_dim=9)


def test_importing_models_registers_exactly_the_builtin_backbones() -> None:
    assert list_backbones() == sorted(["mlp", "smallcnn", "resnet32_cifar", "resnet18", "resnet34", "resnet50"])
