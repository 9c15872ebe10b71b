"""ImageNet-1k class names (standard index order), shipped as `imagenet_classes.txt`.

Why shipped: the hub downloads that usually provide them are unreachable offline. The file was
generated once from torchvision's `_IMAGENET_CATEGORIES` (read as text from the wheel, never
installed or imported) with:

    .venv/bin/pip download --no-deps torchvision==0.29.1 -d /tmp/tv
    .venv/bin/python -m jtl.interop.imagenet /tmp/tv/torchvision-0.29.1-*.whl
"""

from __future__ import annotations

import ast
import functools
import sys
import zipfile
from importlib import resources
from pathlib import Path

CLASSES_FILE = "imagenet_classes.txt"
META_MODULE = "torchvision/models/_meta.py"


@functools.cache
def imagenet_class_names() -> tuple[str, ...]:
    """The 1000 ImageNet class names, index i = class id i."""
    text = resources.files("jtl.interop").joinpath(CLASSES_FILE).read_text(encoding="utf-8")
    names = tuple(line for line in text.splitlines() if line)
    if len(names) != 1000:
        raise ValueError(f"{CLASSES_FILE} should hold 1000 class names, has {len(names)}")
    return names


def class_names_from_wheel(wheel: str | Path) -> list[str]:
    """`_IMAGENET_CATEGORIES` from a torchvision wheel, parsed with `ast` (nothing executed)."""
    with zipfile.ZipFile(wheel) as zf:
        source = zf.read(META_MODULE).decode("utf-8")
    for node in ast.parse(source).body:
        targets = []
        if isinstance(node, ast.Assign):
            targets = node.targets
        elif isinstance(node, ast.AnnAssign):
            targets = [node.target]
        if any(isinstance(t, ast.Name) and t.id == "_IMAGENET_CATEGORIES" for t in targets):
            names = ast.literal_eval(node.value)
            if len(names) != 1000:
                raise ValueError(f"expected 1000 ImageNet categories, got {len(names)}")
            return list(names)
    raise ValueError(f"_IMAGENET_CATEGORIES not found in {wheel}:{META_MODULE}")


def main(argv: list[str]) -> None:
    """Regenerates `imagenet_classes.txt` next to this module from a torchvision wheel."""
    if len(argv) != 1:
        raise SystemExit("usage: python -m jtl.interop.imagenet TORCHVISION_WHEEL")
    names = class_names_from_wheel(argv[0])
    out = Path(__file__).with_name(CLASSES_FILE)
    out.write_text("\n".join(names) + "\n", encoding="utf-8")
    print(f"wrote {len(names)} names to {out}")


if __name__ == "__main__":
    main(sys.argv[1:])
