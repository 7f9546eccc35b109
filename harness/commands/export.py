"""`harness export`: an adapter at a chosen scale, as a plain PEFT adapter (or a merged model).

The update of a LoRA layer is ``scaling * B(A(x))`` (plus B's bias with ``lora_bias``), so multiplying
every ``lora_B`` tensor by the scale gives, exactly, the model the sweep evaluated at that scale: for
plain LoRA, rsLoRA (the scaling is computed the same way on load) and DoRA (the scale multiplies
``B @ A`` inside the weight norm as well). PEFT's ``add_weighted_adapter`` is not used: in peft 0.21.2
it is wrong for rsLoRA and DoRA (peft#3761). ``modules_to_save`` copies are not scaled at run time
and are copied unchanged.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from harness.jobs.export import export
from harness.models.base import DEFAULT_BASE


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export",
        help="write an adapter scaled by S (plain PEFT loads it) or a merged model",
        description=(
            "Write the adapter at --scale S as a new adapter directory that plain PEFT loads and that equals the "
            "run-time scaled model (every lora_B multiplied by S), with a harness.json naming its parent and the "
            "scale; or, with --merge, a full model (safetensors) with the scaled update merged into the base."
        ),
    )
    p.add_argument("--adapter", required=True, type=Path, metavar="DIR", help="the adapter to export")
    p.add_argument("--scale", required=True, type=float, metavar="S", help="the scale, e.g. the sweep's recommendation")
    p.add_argument("--out", required=True, type=Path, metavar="DIR", help="directory to write (must not exist unless --force)")
    p.add_argument("--merge", action="store_true", help="write a merged full model instead of an adapter")
    p.add_argument("--base", default=DEFAULT_BASE,
                   help="the base the adapter must fit (checked from its files; merged into with --merge) (default: %(default)s)")
    p.add_argument("--force", action="store_true", help="replace an existing --out directory")
    p.add_argument("--db", type=Path, default=None, metavar="F",
                   help="results database whose results at this scale go into the model card (default: $HARNESS_DB "
                        "or ./harness.duckdb)")
    p.add_argument("--base-id", default=None, metavar="ORG/NAME",
                   help="the base model's hub id for the model card (default: known for the embedded model, else read "
                        "from its config; a local path is never written)")


def run(args: argparse.Namespace) -> int:
    print(export(args.adapter, args.scale, Path(args.out), merge=args.merge, base=args.base, force=args.force,
                 db=args.db, base_id=args.base_id))
    return 0
