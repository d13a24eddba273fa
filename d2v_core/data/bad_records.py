"""Accounting of records that were skipped instead of crashing the run.

DataLoader workers count skips in a :class:`BadRecordStats` window and ship it inside each batch
(``"_skipped"``, ``"_seen"``, ``"_examples"``); the main process pops those keys with
:meth:`BadRecordStats.update` and aggregates them over workers.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from d2v_core.errors import DataError

#: How many (url, key, message) examples are kept for error messages.
MAX_EXAMPLES = 20
#: Distinct noted records remembered (to count each once); later notes are counted, not deduplicated.
MAX_NOTED = 10_000


class BadRecordStats:
    """Skipped records per reason, records seen, and the first few examples."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self.seen = 0
        self.examples: list[tuple[str, str, str]] = []
        # records used after a change (e.g. "truncated"), not bad: distinct (reason, url, key)
        # counted once per run, since a record packed into several rows is decoded once per row
        self.notes: Counter[str] = Counter()
        self.noted: list[tuple[str, str, str]] = []
        self._noted: set[tuple[str, str, str]] = set()

    # -- counting ------------------------------------------------------------------------
    def skip(self, reason: str, url: Any = None, key: Any = None, message: str = "") -> None:
        """Count one skipped record (or broken tar member) under ``reason``."""
        self.counts[reason] += 1
        if len(self.examples) < MAX_EXAMPLES:
            first = str(message).splitlines()[0] if message else ""
            self.examples.append((str(url or "?"), str(key or "?"), f"{reason}: {first[:300]}" if first else reason))

    def note(self, reason: str, url: Any = None, key: Any = None) -> None:
        """Count a record that was used but changed (cut to the size limit, ...), once."""
        self._add_notes([(reason, str(url or "?"), str(key or "?"))])

    def _add_notes(self, noted: list | tuple) -> None:
        for item in noted:
            triple = tuple(str(x) for x in item)
            if len(self._noted) >= MAX_NOTED:  # bounded memory and checkpoint size: count, no longer dedupe
                self.notes[triple[0]] += 1
            elif triple not in self._noted:
                self._noted.add(triple)  # type: ignore[arg-type]
                self.noted.append(triple)  # type: ignore[arg-type]
                self.notes[triple[0]] += 1

    def merge(self, counts: dict[str, int], seen: int, examples: list | tuple = (), notes: list | tuple | None = None) -> None:
        self.counts.update({k: int(v) for k, v in counts.items()})
        self._add_notes(notes or ())
        self.seen += int(seen)
        for ex in examples:
            if len(self.examples) >= MAX_EXAMPLES:
                break
            self.examples.append(tuple(str(x) for x in ex))  # type: ignore[arg-type]

    def update(self, batch: dict) -> dict:
        """Pop the accounting keys a worker put in ``batch`` and add them; returns ``batch``."""
        skipped = batch.pop("_skipped", None) or {}
        seen = batch.pop("_seen", 0)
        examples = batch.pop("_examples", None) or ()
        self.merge(skipped, int(seen), examples, batch.pop("_notes", None))
        return batch

    def pop_window(self) -> dict:
        """The counts since the last call as batch fields, then reset (used in workers)."""
        fields = {"_skipped": dict(self.counts), "_seen": self.seen, "_examples": list(self.examples), "_notes": list(self.noted)}
        self.counts, self.seen, self.examples = Counter(), 0, []
        self.notes, self.noted, self._noted = Counter(), [], set()
        return fields

    # -- reading -------------------------------------------------------------------------
    @property
    def bad(self) -> int:
        return sum(self.counts.values())

    @property
    def bad_fraction(self) -> float:
        return self.bad / self.seen if self.seen else 0.0

    def summary(self) -> str:
        """One line: ``seen 120 records, skipped 7 (5.8%): too_short 4, error:ValueError 3``."""
        line = f"seen {self.seen} records, skipped {self.bad} ({100 * self.bad_fraction:.1f}%)"
        if self.counts:
            line += ": " + ", ".join(f"{r} {n}" for r, n in self.counts.most_common())
        if self.notes:
            line += "; used after changes: " + ", ".join(f"{r} {n}" for r, n in self.notes.most_common())
        return line

    def check(self, max_bad_fraction: float, min_seen: int = 100) -> None:
        """Raise :class:`DataError` when more than ``max_bad_fraction`` of at least ``min_seen``
        records were unusable (the data or the record decoder is broken, not a few files)."""
        if self.seen >= max(1, min_seen) and self.bad_fraction > max_bad_fraction:
            example = ""
            if self.examples:
                url, key, msg = self.examples[0]
                example = f"; first: {url} [{key}] {msg}"
            raise DataError(
                f"{100 * self.bad_fraction:.0f}% of records are unusable (limit data.max_bad_fraction="
                f"{max_bad_fraction}): {self.summary()}{example}; fix the data or the record decoder, or raise the "
                "limit with --max-bad-fraction"
            )

    def snapshot(self) -> tuple[Counter, int]:
        return Counter(self.counts), self.seen

    def state_dict(self) -> dict:
        return {"counts": dict(self.counts), "seen": self.seen, "examples": [list(e) for e in self.examples],
                "notes": dict(self.notes), "noted": [list(n) for n in self.noted]}

    def load_state_dict(self, state: dict) -> None:
        self.counts = Counter({k: int(v) for k, v in state.get("counts", {}).items()})
        self.seen = int(state.get("seen", 0))
        self.notes, self.noted, self._noted = Counter(), [], set()
        self._add_notes(state.get("noted", []))
        self.examples = [tuple(e) for e in state.get("examples", [])][:MAX_EXAMPLES]  # type: ignore[misc]

    def __repr__(self) -> str:
        return f"BadRecordStats({self.summary()})"
