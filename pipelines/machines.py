"""Training machine presets with TensorFlow Cloud's COMMON_MACHINE_CONFIGS names, as Vertex AI machine specs."""

from __future__ import annotations

from dataclasses import dataclass

from components.errors import InputError


@dataclass(frozen=True)
class MachineSpec:
    machine_type: str
    accelerator_type: str = ""
    accelerator_count: int = 0


def _gpus(accelerator: str, one: str, four: str, eight: str = "") -> dict[str, MachineSpec]:
    name = accelerator.split("_")[-1]
    presets = {f"{name}_1X": MachineSpec(one, accelerator, 1), f"{name}_4X": MachineSpec(four, accelerator, 4)}
    if eight:
        presets[f"{name}_8X"] = MachineSpec(eight, accelerator, 8)
    return presets


PRESETS: dict[str, MachineSpec] = {
    "CPU": MachineSpec("n1-standard-4"),
    **_gpus("NVIDIA_TESLA_P100", "n1-standard-8", "n1-standard-16"),
    **_gpus("NVIDIA_TESLA_P4", "n1-standard-8", "n1-standard-16"),
    **_gpus("NVIDIA_TESLA_V100", "n1-standard-8", "n1-standard-16", "n1-standard-32"),
    **_gpus("NVIDIA_TESLA_T4", "n1-standard-8", "n1-standard-16"),
    **_gpus("NVIDIA_TESLA_A100", "a2-highgpu-1g", "a2-highgpu-4g", "a2-highgpu-8g"),
    **_gpus("NVIDIA_L4", "g2-standard-8", "g2-standard-48", "g2-standard-96"),
}


# TensorFlow Cloud's presets for accelerators Vertex AI no longer offers (its AcceleratorType enum marks
# NVIDIA_TESLA_K80 end of support): a job asking for one would be refused after the pipeline had already run.
RETIRED = {"K80_1X", "K80_4X", "K80_8X"}


def machine_spec(preset: str) -> MachineSpec:
    name = preset.upper()
    if name in RETIRED:
        raise InputError(f"machine preset {preset!r}: Vertex AI has retired the K80 GPU; choose T4_1X, T4_4X, "
                         "L4_1X or another of " + ", ".join(PRESETS))
    try:
        return PRESETS[name]
    except KeyError:
        raise InputError(f"unknown machine preset {preset!r}; choose from {', '.join(PRESETS)}") from None
