"""Generated document trees for benchmarks: deterministic, sized by file count."""

from __future__ import annotations

import random
from pathlib import Path

WORDS = (
    "service deploy cache request latency token agent sandbox policy review incident budget "
    "customer release feature metric queue storage network backup schema index replica shard "
    "gateway session timeout retry quota invoice contract meeting roadmap sprint owner team"
).split()


def make_corpus(root: Path, files: int, lines_per_file: int = 40, seed: int = 7, needle_every: int = 25) -> Path:
    """`files` markdown files in nested folders; every `needle_every`-th file holds a needle line."""
    rng = random.Random(seed)
    root.mkdir(parents=True, exist_ok=True)
    for i in range(files):
        folder = root / f"area-{i % 10:02d}" / f"topic-{(i // 10) % 10:02d}"
        folder.mkdir(parents=True, exist_ok=True)
        lines = [f"# Document {i}"]
        for n in range(lines_per_file):
            lines.append(" ".join(rng.choice(WORDS) for _ in range(12)))
            if n == lines_per_file // 2 and i % needle_every == 0:
                lines.append(f"The needle code for document {i} is N-{i:05d}.")
        (folder / f"doc-{i:05d}.md").write_text("\n".join(lines) + "\n")
    return root
