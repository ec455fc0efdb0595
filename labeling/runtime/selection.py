"""Which unlabeled images a round spends its labeling budget on (active learning).

Every candidate gets an **uncertainty** in [0, 1] from what the device recorded with its upload (S3 user
metadata written by the inference component, `edge_deployment/components/inference/inspector/feedback.py`):

* `uncertainty`: the device's own value (top score inside the uncertainty band: 1 at its middle, 0 at its
  edges); older devices record only `top-score`, and the same formula is applied with the default band;
* reason `drift`: the model found nothing while its rate of empty frames had left what it showed on its
  test split (a model going blind): 1, the model's silence itself is in doubt;
* reason `sample`: a confident frame sampled at random: 0;
* no device metadata (images put under raw-images/ by people or a line camera): 0.5, unknown.

Candidates are ranked by uncertainty, then by recency (newest first), never by S3 key order. The budget
(`labeling.max_images_per_job`) is shared fairly between sources: devices (`raw-images/edge/<thing>/`)
and everything else as one more source take turns, each giving its best remaining candidate, so one
chatty device cannot fill a round alone. Only the best `budget` candidates of each source are kept in
memory, whatever the number of candidates.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass
from typing import Any

# shared.names.EDGE_UPLOAD_PREFIX: the function bundle carries only shared/contracts.py (tests check they agree)
EDGE_UPLOAD_PREFIX = "raw-images/edge/"
UNKNOWN_UNCERTAINTY = 0.5
DEFAULT_BAND = (0.3, 0.7)
OTHER_SOURCE = "other"
# S3 returns user metadata keys in lower case without the x-amz-meta- prefix.
META_UNCERTAINTY = "uncertainty"
META_TOP_SCORE = "top-score"
META_REASON = "reason"


@dataclass(frozen=True)
class Candidate:
    """An unlabeled image with what ranks it (a row of the round's candidate files)."""

    key: str
    size: int
    modified: str = ""  # ISO-8601 LastModified from the listing
    uncertainty: float = UNKNOWN_UNCERTAINTY
    reason: str = ""  # the device's upload reason, "" for other images

    @property
    def source(self) -> str:
        return source_of(self.key)

    def rank(self) -> tuple[float, str, str]:
        """Larger is better: most uncertain first, then newest, then (for a stable order) the key."""
        return (self.uncertainty, self.modified, self.key)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> Candidate:
        return cls(
            key=str(raw["key"]),
            size=int(raw["size"]),
            modified=str(raw.get("modified", "")),
            uncertainty=float(raw.get("uncertainty", UNKNOWN_UNCERTAINTY)),
            reason=str(raw.get("reason", "")),
        )


def source_of(key: str) -> str:
    """`edge/<thing>` for a device's upload, `other` for every other raw image."""
    if key.startswith(EDGE_UPLOAD_PREFIX):
        thing = key[len(EDGE_UPLOAD_PREFIX) :].split("/", 1)[0]
        if thing:
            return f"edge/{thing}"
    return OTHER_SOURCE


def band_uncertainty(top_score: float, band: tuple[float, float] = DEFAULT_BAND) -> float:
    """1 at the middle of the uncertainty band, falling to 0 at its edges and outside it."""
    low, high = band
    middle, half = (low + high) / 2, (high - low) / 2
    if half <= 0:
        return 0.0
    return max(0.0, 1.0 - abs(top_score - middle) / half)


def uncertainty_from_metadata(metadata: Mapping[str, str]) -> tuple[float, str]:
    """(uncertainty, reason) from an upload's S3 user metadata; unknown values give 0.5."""
    reason = str(metadata.get(META_REASON, "")).strip()
    if reason == "drift":
        return 1.0, reason
    if reason == "sample":
        return 0.0, reason
    for key, convert in (
        (META_UNCERTAINTY, lambda value: value),
        (META_TOP_SCORE, band_uncertainty),
    ):
        raw = metadata.get(key)
        if raw is None:
            continue
        try:
            value = float(raw)
        except ValueError:
            continue
        if math.isfinite(value) and 0.0 <= value <= 1.0:
            return round(float(convert(value)), 6), reason
    return UNKNOWN_UNCERTAINTY, reason


class BestPerSource:
    """Keeps the `limit` best candidates of every source (a bounded heap each)."""

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError("limit must be at least 1")
        self.limit = limit
        self._heaps: dict[str, list[tuple[tuple[float, str, str], Candidate]]] = {}
        self.seen = 0

    def add(self, candidate: Candidate) -> None:
        self.seen += 1
        heap = self._heaps.setdefault(candidate.source, [])
        item = (candidate.rank(), candidate)
        if len(heap) < self.limit:
            heapq.heappush(heap, item)
        elif item[0] > heap[0][0]:
            heapq.heapreplace(heap, item)

    def ranked(self) -> dict[str, list[Candidate]]:
        """Source -> its kept candidates, best first."""
        return {
            source: [c for _, c in sorted(heap, key=lambda item: item[0], reverse=True)]
            for source, heap in self._heaps.items()
        }


def fair_order(ranked: Mapping[str, list[Candidate]]) -> Iterator[Candidate]:
    """Round-robin over sources, each giving its best remaining candidate; sources with better
    candidates go first in every turn. Ends when every source is exhausted."""
    queues = {source: list(items) for source, items in ranked.items() if items}
    positions = dict.fromkeys(queues, 0)
    while queues:
        order = sorted(queues, key=lambda source: queues[source][positions[source]].rank(), reverse=True)
        for source in order:
            yield queues[source][positions[source]]
            positions[source] += 1
            if positions[source] >= len(queues[source]):
                del queues[source]


def rank_candidates(candidates: Iterable[Candidate], *, budget: int) -> list[Candidate]:
    """The order in which a round takes candidates (more than `budget` only when some prove unusable)."""
    best = BestPerSource(limit=budget)
    for candidate in candidates:
        best.add(candidate)
    return list(fair_order(best.ranked()))
