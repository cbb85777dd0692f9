"""The model subcommands of `xray`: predict and adapt, on image files (TensorFlow inside)."""

from __future__ import annotations

import argparse
from pathlib import Path

from xray.cli.base import add_command
from xray.core.params import AdaptParams

PREDICT_BATCH = 32
_AD = AdaptParams()  # the adaptation defaults (the help shows them; no TF import here)
ADAPT_DESCRIPTION = """\
Re-estimates the model's BatchNorm statistics on the images (AdaBN; optionally TENT on
BatchNorm scale/shift and a label-shift threshold move: to a known --prevalence, or by the
EM prior estimate where BBSE agrees). A guard falls back to the unadapted model when the
adapted calls overturn too many of its calls. No label is read. Use a few dozen images or
more from one site/setting, both classes ideally present. Defaults come from params.yaml's
`adapt` section when a params.yaml is in the current folder, else the values shown; options
override both. The output is a model file like any other: its metadata names the
adaptation and the images' sha256."""


def _on(flag: bool) -> str:
    return "on" if flag else "off"


def _add_adapt_options(p: argparse._ActionsContainer, batch_help: str | None = None) -> None:
    """The adaptation options shared by `xray adapt` and `xray predict --adapt`."""
    src = "params.yaml adapt.{}, else {}"
    p.add_argument(
        "--no-bn",
        action="store_true",
        help="skip AdaBN, the re-estimation of BatchNorm statistics "
        f"(default: {src.format('bn', 'AdaBN ' + _on(_AD.bn))})",
    )
    p.add_argument(
        "--tent-steps",
        type=int,
        metavar="N",
        help="TENT entropy-minimization steps on BatchNorm scale/shift, 0 = off "
        f"(default: {src.format('tent_steps', _AD.tent_steps)})",
    )
    p.add_argument(
        "--tent-lr",
        type=float,
        metavar="X",
        help=f"TENT learning rate (default: {src.format('tent_lr', _AD.tent_lr)})",
    )
    p.add_argument(
        "--prior",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="move the threshold by the estimated change of class balance (EM); needs a "
        f"model file with prior_reference (default: {src.format('prior', _on(_AD.prior))})",
    )
    p.add_argument(
        "--prevalence",
        type=float,
        metavar="X",
        help="the site's known PNEUMONIA share, 0 < X < 1: the threshold moves to it by the "
        "prior ratio, no estimate (default: params.yaml adapt.prevalence, else unknown)",
    )
    p.add_argument(
        "--prior-check",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="move the threshold by the estimate only where BBSE agrees with EM and the "
        f"own-bias check is silent (default: {src.format('prior_check', _on(_AD.prior_check))})",
    )
    p.add_argument(
        "--guard",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="fall back to the unadapted model when adaptation overturns too many calls "
        f"(default: {src.format('guard', _on(_AD.guard))})",
    )
    p.add_argument(
        "--min-images",
        type=int,
        metavar="N",
        help="fewest usable images to adapt to "
        f"(default: {src.format('min_images', _AD.min_images)})",
    )
    p.add_argument(
        "--batch-size",
        type=int,
        metavar="N",
        help=batch_help
        or f"images per adaptation batch (default: {src.format('batch_size', _AD.batch_size)})",
    )


def _adapt_settings(args: argparse.Namespace, batch_size: int | None) -> object:
    """AdaptParams: params.yaml's `adapt` section (if in the current folder), then options."""
    from xray.cli.adapt import settings_from

    return settings_from(
        bn=False if args.no_bn else None,
        tent_steps=args.tent_steps,
        tent_lr=args.tent_lr,
        prior=args.prior,
        prevalence=args.prevalence,
        prior_check=args.prior_check,
        guard=args.guard,
        min_images=args.min_images,
        batch_size=batch_size,
    )


def cmd_predict(args: argparse.Namespace) -> int:
    """Predict images or folders with a trained model (optionally adapted to them first)."""
    from xray.cli.predict import predict_paths

    settings = _adapt_settings(args, args.batch_size) if args.adapt else None
    return predict_paths(
        args.paths,
        args.model,
        as_json=args.json,
        batch_size=args.batch_size or PREDICT_BATCH,
        adapt=settings,
        prior_flag=args.prior,
    )


def cmd_adapt(args: argparse.Namespace) -> int:
    """Adapt a model file to unlabeled images and write the adapted model."""
    from xray.cli.adapt import adapt_file

    settings = _adapt_settings(args, args.batch_size)
    return adapt_file(
        args.model, args.paths, args.output, settings, prior_flag=args.prior, as_json=args.json
    )


def add_model_commands(sub: argparse._SubParsersAction) -> None:
    """The model subcommands: predict, adapt."""
    pred = add_command(
        sub,
        "predict",
        "classify images with a trained model",
        "Print one line per image: its label, P(PNEUMONIA) and the model's threshold (or one "
        "JSON object per line). Any JPEG/PNG size and mode is accepted; a bad file gets a "
        "one-line error and the others are still predicted (exit status 1).",
        """
xray predict path/to/image.jpeg path/to/folder/
xray predict --json --model models/base.keras image.png
xray predict --adapt --model models/finetuned.keras site_b/
""",
    )
    pred.add_argument("paths", nargs="+", type=Path, help="image files or folders", metavar="PATH")
    pred.add_argument(
        "--model",
        type=Path,
        default=Path("models/finetuned.keras"),
        metavar="FILE",
        help="model file written by the pipeline (.keras)",
    )
    pred.add_argument(
        "--json", action="store_true", help="one JSON object per line (default: text lines)"
    )
    pred.add_argument(
        "--adapt",
        action="store_true",
        help="first adapt the model (in memory) to all the given images, then predict them at "
        "the adapted threshold (default: off); fewer than --min-images: predicted unadapted",
    )
    _add_adapt_options(
        pred.add_argument_group("adaptation (used with --adapt)"),
        batch_help=f"images per batch (default: {PREDICT_BATCH}; with --adapt, also the "
        f"adaptation batch, default params.yaml adapt.batch_size, else {_AD.batch_size})",
    )
    pred.set_defaults(func=cmd_predict)

    ada = add_command(
        sub,
        "adapt",
        "adapt a model to unlabeled images of a new site (BatchNorm statistics, ...)",
        ADAPT_DESCRIPTION,
        """
xray adapt models/finetuned.keras site_b/ -o models/finetuned_site_b.keras
xray predict --model models/finetuned_site_b.keras site_b/
""",
    )
    ada.add_argument("model", type=Path, help="the trained model file (.keras), left unchanged")
    ada.add_argument(
        "paths", nargs="+", type=Path, help="image files or folders (JPEG/PNG)", metavar="PATH"
    )
    ada.add_argument(
        "-o",
        "--output",
        type=Path,
        required=True,
        metavar="FILE",
        help="where to write the adapted model (.keras, not the input model; required)",
    )
    ada.add_argument(
        "--json", action="store_true", help="print the report as JSON (default: one line)"
    )
    _add_adapt_options(ada)
    ada.set_defaults(func=cmd_adapt)
