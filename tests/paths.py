"""Where the tests find the repository's files."""

from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RECIPES = REPO / "recipes"
EXAMPLES = REPO / "examples"
# Full MNIST and Fashion-MNIST in torchvision's layout, next to the repository on development machines
# (tests that need it skip without it).
SHARED_DATA = REPO.parent / "shared" / "data"
