"""Natural corruptions at calibrated severities (AudioSet-C): twelve registered perturbations.

Each is a :class:`~audiobench.perturb.corruptions.base.Corruption` with an integer ``severity``
1..5 and one module-level table of its physical parameter per severity (listed, with sources and
licences, in ``docs/corruptions.md``; :data:`SEVERITY_TABLES` gathers them).
"""

from __future__ import annotations

from audiobench.perturb.corruptions import additive, amplitude, codec, room, spectral, timescale
from audiobench.perturb.corruptions.base import SEVERITIES, Corruption, Prepared

#: the twelve corruptions in suite order
CORRUPTIONS = (
    additive.PinkNoise, additive.BrownNoise, additive.Background, room.Reverb,
    spectral.Lowpass, spectral.Highpass, amplitude.Clipping, amplitude.Bitcrush,
    codec.MP3, spectral.Resample, timescale.PitchShift, timescale.Speed,
)
CORRUPTION_NAMES = tuple(c.name for c in CORRUPTIONS)
#: name -> (physical parameter, unit, {severity: value})
SEVERITY_TABLES = {c.name: (c.physical_param, c.physical_unit, dict(c.table)) for c in CORRUPTIONS}

__all__ = ["CORRUPTIONS", "CORRUPTION_NAMES", "SEVERITIES", "SEVERITY_TABLES", "Corruption", "Prepared"]
