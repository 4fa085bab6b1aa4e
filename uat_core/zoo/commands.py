"""``python -m uat_core.zoo build|report|heldout|refresh|reattack|add-study|list``."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..engine.errors import UATError
from .builder import RECIPES, add_study_model, build, reattack, refresh
from .report import add_heldout, rerender, write_report
from .store import ROOT, list_models

def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m uat_core.zoo", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="train and ship the zoo models of a dataset (resumes)")
    b.add_argument("--dataset", default="digits", help="digits | cifar10")
    b.add_argument("--only", default=None, help="comma-separated subset, e.g. natural,lowcost")
    b.add_argument("--data-root", default=None, help="CIFAR-10 location (default $UAT_DATA)")
    b.add_argument("--device", default="auto",
                   help="auto (CUDA if present, else CPU) | cpu | cuda | cuda:N; a CPU build of cifar10 uses the "
                        "shorter CPU recipes (RECIPES[...]['cpu_models'])")
    r = sub.add_parser("report", help="attack every zoo model (Alg. 2, best fixed pattern, strong attack, per-instance "
                                      "PGD), build the transfer matrix, write docs/results.md")
    r.add_argument("--dataset", default="cifar10", help="digits | cifar10")
    r.add_argument("--data-root", default=None, help="CIFAR-10 location (default $UAT_DATA)")
    r.add_argument("--device", default="auto", help="auto (CUDA if present, else CPU) | cpu | cuda | cuda:N")
    r.add_argument("--attack-size", type=int, default=None,
                   help="training images per attack (default 2000; digits all)")
    r.add_argument("--attack-epochs", type=int, default=10,
                   help="passes of Alg. 2 over the attack images, for plain Alg. 2 and for the strong attack's winner "
                        "(default 10)")
    r.add_argument("--pgd-size", type=int, default=500,
                   help="test images of the per-instance PGD column (an upper bound on any universal attack; 0 = none)")
    r.add_argument("--out", default=str(ROOT / "docs" / "results.md"),
                   help="the Markdown file to write (a .json twin is written beside it; both are replaced)")
    r.add_argument("--only", default=None, help="comma-separated zoo models (by training algorithm) to report on, "
                                                "e.g. natural,uat,lowcost (default: all)")
    r.add_argument("--render-only", action="store_true",
                   help="write --out again from its .json twin without attacking anything (after new study rows "
                        "or a change to the report's text)")
    r.add_argument("--no-cache", action="store_true",
                   help="attack every model again instead of reusing perturbations saved in runs/report_cache "
                        "by an earlier report (they are keyed by model sha256, ε, attack size and epochs)")
    h = sub.add_parser("heldout", help="the held-out protocol: δ built and picked on one half of the test split, "
                                       "scored on the other, added to docs/results.md (+ .json)")
    h.add_argument("--dataset", default="cifar10", help="digits | cifar10")
    h.add_argument("--data-root", default=None, help="CIFAR-10 location (default $UAT_DATA)")
    h.add_argument("--device", default="auto", help="auto (CUDA if present, else CPU) | cpu | cuda | cuda:N")
    h.add_argument("--out", default=str(ROOT / "docs" / "results.md"),
                   help="the report to add the figures to (its .json twin is read and written again)")
    h.add_argument("--only", default=None, help="comma-separated zoo models (by training algorithm), e.g. natural "
                                                "(default: every model in the report)")
    f = sub.add_parser("refresh", help="recompute the fixed-slice figures of the manifest")
    f.add_argument("--dataset", default="digits", help="digits | cifar10")
    f.add_argument("--data-root", default=None, help="CIFAR-10 location (default $UAT_DATA)")
    ra = sub.add_parser("reattack", help="rebuild every shipped perturbation with the strong attack (reuses the "
                                         "report's cached perturbations) and record it in the manifest")
    ra.add_argument("--dataset", default="digits", help="digits | cifar10")
    ra.add_argument("--data-root", default=None, help="CIFAR-10 location (default $UAT_DATA)")
    ra.add_argument("--device", default="auto", help="auto (CUDA if present, else CPU) | cpu | cuda | cuda:N")
    st = sub.add_parser("add-study", help="ship a trained model of the vulnerability study "
                                          "(bench/vulnerability_study.py) beside the zoo, with its strong-attack δ")
    st.add_argument("--row", required=True,
                    help="the study row, e.g. ls01 (python bench/vulnerability_study.py --list)")
    st.add_argument("--data-root", default=None, help="CIFAR-10 location (default $UAT_DATA)")
    st.add_argument("--device", default="auto", help="auto (CUDA if present, else CPU) | cpu | cuda | cuda:N")
    sub.add_parser("list", help="print the manifest")
    args = ap.parse_args(argv)
    try:
        if args.cmd == "build":
            if args.dataset not in RECIPES:
                raise UATError(f"unknown zoo dataset '{args.dataset}': choose digits or cifar10")
            build(args.dataset, args.only.split(",") if args.only else None, args.data_root, device=args.device)
        elif args.cmd == "report" and args.render_only:
            rerender(Path(args.out))
        elif args.cmd == "report":
            write_report(args.dataset, args.data_root, args.attack_size, Path(args.out), args.attack_epochs,
                         None if args.no_cache else ROOT / "runs" / "report_cache", device=args.device,
                         pgd_size=args.pgd_size, only=args.only.split(",") if args.only else None)
        elif args.cmd == "heldout":
            add_heldout(args.dataset, args.data_root, Path(args.out), args.only.split(",") if args.only else None,
                        args.device)
        elif args.cmd == "refresh":
            refresh(args.dataset, args.data_root)
        elif args.cmd == "add-study":
            add_study_model(args.row, args.data_root, args.device)
        elif args.cmd == "reattack":
            reattack(args.dataset, args.data_root, args.device, ROOT / "runs" / "report_cache")
        else:
            for m in list_models(group=None):
                print(f"{m['name']:40s} clean {100 * m['clean_top1']:5.1f}%  robust "
                      f"{100 * (m.get('robust_top1') or 0):5.1f}%  {m['train_seconds']:7.1f} s")
    except UATError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0
