#!/usr/bin/env python3
"""The crate's public surface, checked against a reviewed snapshot (tests/public-api.txt).

Reads the HTML that `cargo doc --no-deps` wrote (stable rustdoc has no JSON output): every
public item of every module, with the inherent methods, fields and variants of each type and
the traits it implements. A change of the surface fails CI until the snapshot is updated on
purpose: `python3 .ci/public_api.py --bless` (after `cargo doc --no-deps`), and the diff is
reviewed like code. Run with `--features`-free docs: feature-gated items are listed only when
the docs were built with the feature."""
import html
import pathlib
import re
import sys

root = pathlib.Path(__file__).resolve().parent.parent
doc = root / "target" / "doc" / "offload"
snapshot = root / "tests" / "public-api.txt"


def section(text, start_id):
    i = text.find(f'id="{start_id}"')
    if i < 0:
        return ""
    j = text.find("<h2", i + 1)
    return text[i : j if j >= 0 else len(text)]


def items_of(page, path):
    text = page.read_text(errors="replace")
    if 'http-equiv="refresh"' in text[:2000]:
        return []  # a redirect left where a private module's item is re-exported
    out = []
    kind, _, name = page.stem.partition(".")
    out.append(f"{kind} {path}{name}")
    inherent = section(text, "implementations")
    for sub in ("method", "structfield", "variant", "associatedconstant", "associatedtype", "tymethod"):
        src = inherent if sub in ("method", "associatedconstant", "associatedtype") else text
        for m in sorted(set(re.findall(rf'id="{sub}\.([A-Za-z0-9_]+)"', src))):
            out.append(f"{kind} {path}{name}::{m}")
    traits = section(text, "trait-implementations")
    for t in sorted(set(re.findall(r'id="impl-([A-Za-z0-9_]+)(?:%3C[^"]*)?-for-', traits))):
        out.append(f"{kind} {path}{name}: impl {html.unescape(t)}")
    return out


def surface():
    lines = []
    for page in sorted(doc.rglob("*.html")):
        rel = page.relative_to(doc)
        if page.name in ("index.html", "all.html", "sidebar-items.js") or "." not in page.stem:
            continue
        kind = page.stem.split(".")[0]
        if kind not in ("struct", "enum", "trait", "fn", "type", "constant", "static", "macro", "union"):
            continue
        path = "".join(f"{p}::" for p in rel.parts[:-1])
        lines.extend(items_of(page, path))
    return sorted(set(lines))


if not doc.is_dir():
    sys.exit("no docs: run `cargo doc --no-deps` first")
now = surface()
if "--bless" in sys.argv:
    snapshot.write_text("".join(f"{l}\n" for l in now))
    print(f"{len(now)} public items written to {snapshot.relative_to(root)}")
    sys.exit(0)
before = snapshot.read_text().splitlines() if snapshot.exists() else []
added = sorted(set(now) - set(before))
removed = sorted(set(before) - set(now))
for l in added:
    print(f"+ {l}")
for l in removed:
    print(f"- {l}")
if added or removed:
    print(
        f"the public surface changed ({len(added)} added, {len(removed)} removed): review it, "
        "then `cargo doc --no-deps && python3 .ci/public_api.py --bless`"
    )
    sys.exit(1)
print(f"public surface unchanged: {len(now)} items")
