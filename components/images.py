"""Container images the components run in: the one place their URIs are decided.

Components are defined with the local tags below; the Vertex pipeline swaps in registry URIs at compile time
(`catsdogs compile --images-registry REGION-docker.pkg.dev/PROJECT/REPO --images-tag TAG`).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

COMPONENTS = "catsdogs-components"
TRAINER = "catsdogs-trainer"
SERVING = "catsdogs-serving"


@dataclass(frozen=True)
class Images:
    components: str
    trainer: str
    serving: str

    @classmethod
    def from_registry(cls, registry: str = "", tag: str = "latest") -> Images:
        prefix = registry.rstrip("/") + "/" if registry else ""
        return cls(*(f"{prefix}{name}:{tag}" for name in (COMPONENTS, TRAINER, SERVING)))


LOCAL = Images.from_registry()


def with_image(component, image: str):
    """A copy of a KFP component that runs in `image` (the original keeps its own)."""
    swapped = copy.deepcopy(component)
    swapped.component_spec.implementation.container.image = image
    return swapped
