#!/usr/bin/env python3
"""Flags syntax newer than the crate's MSRV (Cargo.toml `rust-version`) that clippy's
`incompatible_msrv` lint cannot see: it checks library APIs, not syntax. The toolchain here is
newer than the MSRV and no older one can be installed, so this scan stands in for building
with the MSRV toolchain. It knows the one feature that matters today: let chains (`if let ..
&& ..`, stable in Rust 1.88 only)."""
import pathlib
import re
import sys

root = pathlib.Path(__file__).resolve().parent.parent
msrv = re.search(r'^rust-version\s*=\s*"([\d.]+)"', (root / "Cargo.toml").read_text(), re.M)
msrv = tuple(int(x) for x in msrv.group(1).split(".")) if msrv else (0,)
if msrv >= (1, 88):
    sys.exit(0)
# `if let PAT = EXPR && ...` or `... && let PAT = EXPR`, across lines, up to the block's `{`.
chain = re.compile(r"\b(?:if|while)\s+let\b[^{;]*?&&|&&\s*let\s", re.S)
bad = []
for path in sorted(root.glob("**/*.rs")):
    if "target" in path.parts or ".git" in path.parts:
        continue
    text = path.read_text(errors="replace")
    for m in chain.finditer(text):
        line = text.count("\n", 0, m.start()) + 1
        bad.append(f"{path.relative_to(root)}:{line}: let chain (Rust 1.88) above rust-version {'.'.join(map(str, msrv))}")
for b in bad:
    print(b)
sys.exit(1 if bad else 0)
