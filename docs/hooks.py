"""MkDocs hook: files of the repository that the site publishes as they are, without a copy under docs/.

- ``CHANGELOG.md`` becomes the page ``changelog.md``;
- the recorded benchmark results, ``bench/results/*.json``, become ``benchmarks/results/*.json``, so the
  benchmarks page links to the very files its tables were made from.
"""

from __future__ import annotations

from pathlib import Path

from mkdocs.config.defaults import MkDocsConfig
from mkdocs.structure.files import File, Files

REPO = Path(__file__).resolve().parent.parent


def on_files(files: Files, config: MkDocsConfig) -> Files:
    files.append(File.generated(config, "changelog.md", abs_src_path=str(REPO / "CHANGELOG.md")))
    for result in sorted((REPO / "bench" / "results").glob("*.json")):
        files.append(File.generated(config, f"benchmarks/results/{result.name}", abs_src_path=str(result)))
    return files
