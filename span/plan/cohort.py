"""The cohort as the workflow plans it: which slides are patched, imported, labelled or made by
the demo; the batch jobs of each stage; and the split plan, whose digest retrains when it
changes."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from span.batches import batch_of, slide_batches
from span.data.samplesheet import Sample

#: Where `demo.generate` makes the demo's slides: <DEMO_DIR>/<slide_id>.tiff.
DEMO_DIR = "resources/demo/slides"

#: The batch rules, each with the rule whose batches it shares (extract: patch's).
BATCH_RULES = {
    "demo_slides": "demo_slides",
    "patch": "patch",
    "extract": "patch",
    "import_features": "import_features",
}


@dataclass(frozen=True)
class Cohort:
    """The sample sheet's slides in the sets the rules use, and their batch jobs."""

    samples: Mapping[str, Sample]
    demo_generate: bool
    slides_per_job: int

    @property
    def ids(self) -> list[str]:
        return sorted(self.samples)

    @property
    def patched(self) -> list[str]:
        return sorted(s for s, x in self.samples.items() if x.needs_patching)

    @property
    def imported(self) -> list[str]:
        return sorted(s for s, x in self.samples.items() if not x.needs_patching)

    @property
    def labelled(self) -> list[str]:
        return sorted(s for s, x in self.samples.items() if x.label)

    def is_demo_slide(self, path: str, slide_id: str) -> bool:
        """Whether the demo's rule makes this slide (demo.generate and the demo path)."""
        return self.demo_generate and path == f"{DEMO_DIR}/{slide_id}.tiff"

    @property
    def demo_made(self) -> list[str]:
        return sorted(s for s, x in self.samples.items() if self.is_demo_slide(x.path, s))

    def batches(self, rule: str) -> dict[str, list[str]]:
        """Batch name -> slides of a batch rule (labelled and unlabelled apart)."""
        rule = BATCH_RULES[rule]
        if rule == "demo_slides":
            made = self.demo_made
            return slide_batches(made, made, self.slides_per_job)
        slides = self.patched if rule == "patch" else self.imported
        return slide_batches(slides, self.labelled, self.slides_per_job)

    def batch_of(self, rule: str) -> dict[str, str]:
        """Slide -> the name of its batch for a batch rule."""
        return batch_of(self.batches(rule))


def split_key(samples: Mapping[str, Sample], protocol: str) -> str:
    """What the split reads of the sheet: each labelled row's id, patient, label and, under
    the fixed protocol, split (per_seed pools the sheet's splits: editing them re-splits
    nothing); the protocol leads, so that changing it re-splits."""
    pooled = protocol == "per_seed"
    rows = (
        f"{s.slide_id}:{s.patient}:{s.label}:{'' if pooled else s.split}"
        for s in samples.values()
        if s.label
    )
    return "|".join([protocol, *rows])


def split_plan(
    samples: Mapping[str, Sample],
    classes: Sequence[str],
    splits: Mapping,
    max_bad_tile_share: float,
) -> str:
    """A digest of everything the splits depend on but the features files (the sheet's
    labelled rows, the classes, the split protocol and its options, the exclusion threshold):
    a param of the training jobs, so that they re-run when it changes. The training seeds are
    not in it: adding one retrains no other seed."""
    text = json.dumps(
        [split_key(samples, splits["protocol"]), list(classes), dict(splits), max_bad_tile_share]
    )
    return hashlib.sha1(text.encode()).hexdigest()
