"""``sonotrap bundle keygen|sign|verify|inspect|pack``: make keys, sign and check model bundles."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from edge.errors import SonotrapError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", metavar="ACTION")
    p = sub.add_parser("keygen", help="create an ed25519 key pair (PRIVATE stays with you, .pub goes to devices)")
    p.add_argument("private_key", type=Path, help="where to write the private key (created with mode 0600)")
    p.add_argument("--public", type=Path, default=None, help="public key path (default: PRIVATE with .pub)")
    p = sub.add_parser("sign", help="sign a bundle directory (writes manifest.json.sig)")
    p.add_argument("bundle", type=Path)
    p.add_argument("--key", type=Path, required=True, help="private key from 'sonotrap bundle keygen'")
    p.add_argument("--archive", type=Path, default=None, help="also write a signed .tar.gz here")
    p = sub.add_parser("verify", help="verify a bundle's signature and checksums against trusted keys")
    p.add_argument("bundle", type=Path, help="bundle directory or .tar.gz")
    p.add_argument("--trusted", type=Path, required=True, help="a .pub file or a directory of them")
    p = sub.add_parser("inspect", help="validate a bundle (checksums, model, self-test) and print its manifest")
    p.add_argument("bundle", type=Path, nargs="?", default=None, help="bundle directory or .tar.gz (default: demo)")
    p.add_argument("--trusted", type=Path, default=None, help="also verify the signature against these keys")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p = sub.add_parser("pack", help="pack a bundle directory into a .tar.gz")
    p.add_argument("bundle", type=Path)
    p.add_argument("archive", type=Path)


def run(args: argparse.Namespace) -> int:
    from edge.models import signing
    from edge.models.archive import write_archive
    from edge.models.bundle import describe, load_bundle
    from edge.models.selftest import run_self_test

    action = getattr(args, "action", None)
    if action == "keygen":
        kid = signing.generate_keypair(args.private_key, args.public)
        public = args.public or args.private_key.with_suffix(".pub")
        print(f"key {kid}: private {args.private_key} (keep secret), public {public} (copy to devices)")
        return 0
    if action == "sign":
        if not args.bundle.is_dir():
            raise SonotrapError(f"{args.bundle} is not a bundle directory; sign the directory, then pack it")
        sig = signing.sign_bundle(args.bundle, args.key)
        print(f"signed {args.bundle} -> {sig}")
        if args.archive:
            print(f"wrote {write_archive(args.bundle, args.archive)}")
        return 0
    if action == "verify":
        kid = signing.verify_bundle(args.bundle, args.trusted)
        print(f"OK: {args.bundle} is signed by trusted key {kid}; manifest and model are intact")
        return 0
    if action == "inspect":
        b = load_bundle(args.bundle, trusted_keys=args.trusted)
        diff = run_self_test(b)
        summary = describe(b) | {"self_test_max_abs_diff": diff}
        if args.json:
            print(json.dumps(summary, indent=2))
        else:
            _print_summary(summary, b)
        return 0
    if action == "pack":
        load_bundle(args.bundle, self_test=False)
        print(f"wrote {write_archive(args.bundle, args.archive)}")
        return 0
    raise SonotrapError("choose an action: sonotrap bundle keygen|sign|verify|inspect|pack (see --help)")


def _metrics_line(value, depth: int = 0) -> str:
    """Scalars of a metrics entry, one level of nesting shown (training: val/test); per-class tables left out."""
    if not isinstance(value, dict):
        return f"{value:.4g}" if isinstance(value, float) else str(value)
    parts = []
    for k, v in value.items():
        if not isinstance(v, dict | list):
            parts.append(f"{k}={_metrics_line(v)}")
        elif isinstance(v, dict) and depth == 0 and len(v) <= 12 and any(not isinstance(x, dict | list) for x in v.values()):
            parts.append(f"{k} ({_metrics_line(v, depth + 1)})")
    return ", ".join(parts) or "{}"


def _print_summary(s: dict, b) -> None:
    print(f"{s['name']} {s['version']}  ({s['path']})")
    print(f"  created {s['created']}, schema {s['schema_version']}, needs sonotrap >= {s['min_sonotrap_version']}")
    print(f"  model {s['model_bytes'] / 1e6:.1f} MB sha256 {s['model_sha256'][:16]}..., "
          f"input {s['input']}, output {s['output']}")
    sig = f"signed by {s['signed_by']}" if s["signed_by"] else ("signed (not verified)" if s["signed"] else "unsigned")
    print(f"  {sig}; self-test OK (max abs diff {s['self_test_max_abs_diff']:.2e})")
    prov = s["provenance"]
    if prov:
        print("  provenance: " + ", ".join(f"{k}={v}" for k, v in prov.items() if not isinstance(v, dict | list)))
    for k, v in b.manifest.metrics.items():
        print(f"  metrics {k}: {_metrics_line(v)}")
    if s["quantization"]:
        print("  quantization: " + ", ".join(f"{k}={v}" for k, v in s["quantization"].items() if not isinstance(v, dict | list)))
    enabled, disabled = s["enabled_labels"], s["disabled_labels"]

    def _one(c: str) -> str:
        state = "disabled" if c in disabled else (
            f"expected precision {enabled[c]:.2f}" if enabled.get(c) is not None else "enabled")
        return f"{c} ({b.names[c]}, t={b.thresholds.get(c, 0.5):.2f}, {state})"

    print(f"  labels ({s['labels']}): " + ", ".join(_one(c) for c in b.labels[:12])
          + (" ..." if len(b.labels) > 12 else ""))
    print(f"  enabled by default ({len(enabled)}): " + (", ".join(
        c + (f" (expected precision {p:.2f})" if p is not None else "") for c, p in enabled.items())
        or "none"))
    if disabled:
        print(f"  disabled ({len(disabled)}; published only when named in detector.enable_labels; reasons in --json): "
              + ", ".join(c + (f" (p={d['expected_precision']:.2f})" if d["expected_precision"] is not None else "")
                          for c, d in disabled.items()))
