"""Draw the README figures from an evaluation's results.

    python -m deepfake.cli.figures --results runs/demo/eval/results.json

``images/architecture.png``: the pipeline of the evaluated run, as its ``results.json`` records it
(the tower, its preprocessing and the head); a ViT tower's layer sizes are read from its config
(``--config``, else the hub cache, else the LanguageBind_Image config shipped in the package).
``images/Fig1.png``: per-generator AP of the evaluation. Both land in ``--out`` (default ``images``,
relative to the folder the command runs in: the checkout's own ``images/`` when run there).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from deepfake.cli.args import CliParser
from deepfake.data.preprocess import IMAGENET_MEAN, OPENAI_CLIP_MEAN, Preprocess
from deepfake.utils.fileio import atomic_write

SHIPPED_CONFIG = Path(__file__).resolve().parents[1] / "towers" / "configs" / "languagebind_image.json"
LANGUAGEBIND_IMAGE = "LanguageBind/LanguageBind_Image"
VIT_FAMILIES = ("languagebind", "clip")  # towers whose config vision_config_from reads


def tower_sizes(config_path: Path) -> dict:
    """Layer sizes of the tower in ``config_path`` (a LanguageBind or CLIP config.json)."""
    from deepfake.towers.clip_weights import vision_config_from

    vision, lora = vision_config_from(json.loads(config_path.read_text()), str(config_path))
    return {"hidden": vision.hidden_size, "layers": vision.num_hidden_layers, "heads": vision.num_attention_heads,
            "patch": vision.patch_size, "image": vision.image_size, "mlp": vision.intermediate_size,
            "act": vision.hidden_act, "proj": vision.projection_dim}


def preprocess_text(p: Preprocess) -> str:
    """The preprocessing in a few words, as the figure's box says it."""
    norm = {OPENAI_CLIP_MEAN: "CLIP mean/std", IMAGENET_MEAN: "ImageNet mean/std"}.get(tuple(p.mean), "own mean/std")
    if p.mode == "resize":
        return f"short side {p.resize_size or p.size}\n{p.interpolation} + center crop {p.size}\n{norm}"
    if p.mode == "squash":
        return f"resize to {p.size} x {p.size}\n({p.interpolation})\n{norm}"
    if p.mode == "crop":
        return f"center crop {p.size}\nno resize\n{norm}"
    if p.mode == "window":
        return f"native pixels, no resize\ncentred square\nup to {p.size} px"
    return (f"native pixels, no resize\n{p.grid} x {p.grid} tiles of {p.size} px\n"
            f"{'R, G, B planes' if p.colour else 'gray'}")


def _vit_text(s: dict) -> str:
    tokens = (s["image"] // s["patch"]) ** 2 + 1
    return (f"ViT {s['patch']}x{s['patch']} patches, {tokens} tokens\n{s['layers']} blocks x {s['heads']} heads\n"
            f"hidden {s['hidden']}, MLP {s['mlp']} ({s['act']})\nprojection {s['hidden']}->{s['proj']}")


def tower_text(tower: dict, config_path: Path | None) -> str:
    """A ViT tower's layer sizes from its config; any other tower (the spectral one) as its record names it."""
    if config_path is not None:
        return _vit_text(tower_sizes(config_path))
    family, model = tower.get("family", "?"), tower.get("model", "?")
    body = [family if model == family else f"{family} ({model})", str(tower.get("feature", ""))]
    if tower.get("analysis"):
        body.append(str(tower["analysis"]))
    return "\n".join(_wrap(line, 30) for line in body if line)


def head_text(head: dict) -> tuple[str, str]:
    """(the head's layers, how its output becomes P(fake))."""
    kind, in_dim, classes = head.get("kind"), head.get("in_dim"), int(head.get("num_classes", 2))
    if kind == "mlp":
        body = f"Linear({in_dim},{head['hidden']})\nReLU, Dropout({head['dropout']})\nLinear({head['hidden']},{classes})"
    elif kind == "linear":
        body = f"Linear({in_dim},{classes})"
    else:
        body = f"{kind} head\non {in_dim}-d features"
    return body, ("softmax[:, 1]" if classes == 2 else "sigmoid(logit)") + "\nvs threshold"


def pipeline_boxes(results: dict, config_path: Path | None) -> list[tuple[str, str, str]]:
    """The figure's boxes (title, text, colour) for the run ``results`` describes."""
    tower = results.get("tower") or {}
    feature_dim = tower.get("feature_dim") or (tower_sizes(config_path)["proj"] if config_path else "?")
    head_body, output = head_text(results.get("head") or {"kind": "mlp", "in_dim": feature_dim, "hidden": 256,
                                                          "dropout": 0.1, "num_classes": 2})
    return [
        ("image", "any size, RGB\n(EXIF-rotated)", "#eeeeee"),
        ("preprocess", preprocess_text(Preprocess.from_dict(results["preprocess"])), "#dde8f5"),
        ("frozen tower", tower_text(tower, config_path), "#c9daf0"),
        ("feature cache", f"{feature_dim}-d fp16 per image\nsafetensors shards\n(extracted once)", "#fbe6c9"),
        (f"{(results.get('head') or {}).get('kind', 'mlp').upper()} head", head_body, "#d5efd5"),
        ("P(fake)", output, "#f6d5d5"),
    ]


def _wrap(line: str, width: int) -> str:
    import textwrap

    return "\n".join(textwrap.wrap(line, width)) or line


def _save(fig, path: Path) -> None:
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=130))


def draw_architecture(boxes: list[tuple[str, str, str]], path: Path) -> Path:
    """The pipeline as a row of boxes joined by arrows."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import FancyBboxPatch

    fig, ax = plt.subplots(figsize=(13, 3.2))
    ax.set_xlim(0, len(boxes) * 2.2)
    ax.set_ylim(0, 3)
    ax.axis("off")
    for i, (title, body, colour) in enumerate(boxes):
        x = i * 2.2 + 0.1
        ax.add_patch(FancyBboxPatch((x, 0.4), 1.8, 2.2, boxstyle="round,pad=0.05", fc=colour, ec="#555555"))
        ax.text(x + 0.9, 2.3, title, ha="center", va="center", fontsize=10, weight="bold")
        ax.text(x + 0.9, 1.35, body, ha="center", va="center", fontsize=7.5)
        if i < len(boxes) - 1:
            ax.annotate("", xy=(x + 2.15, 1.5), xytext=(x + 1.9, 1.5), arrowprops={"arrowstyle": "->", "lw": 1.5})
    ax.text(0.1, 0.1, "trainable: head only (frozen tower, features cached)", fontsize=8, style="italic")
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)
    return path


def draw_results(results_path: Path, path: Path, trained_on: str = "one generator") -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    results = json.loads(results_path.read_text())
    level = results["levels"][0]
    rows = [r for r in level["rows"] if not r["category"]]
    names = [r["domain"] for r in rows]
    aps = [r["ap"] or 0.0 for r in rows]
    accs = [r["acc"] or 0.0 for r in rows]
    fig, ax = plt.subplots(figsize=(7, 3.6))
    xs = range(len(names))
    ax.bar([x - 0.2 for x in xs], aps, width=0.4, label="AP", color="#3b6fb6")
    ax.bar([x + 0.2 for x in xs], accs, width=0.4, label="acc @ threshold", color="#e39b43")
    ax.set_xticks(list(xs), names)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("score")
    ax.set_title(f"Per-generator results ({results['tower'].get('model')} tower, trained on {trained_on})", fontsize=10)
    # Outside the axes, under them: inside, it covered the bars of whichever generator it sat on.
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.1), ncol=2, fontsize=8, frameon=False)
    for x, ap in zip(xs, aps):
        ax.text(x - 0.2, ap + 0.01, f"{ap:.2f}", ha="center", fontsize=7)
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)
    return path


def build_parser() -> argparse.ArgumentParser:
    p = CliParser(prog="python -m deepfake.cli.figures", description=__doc__,
                  formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", type=Path, default=None,
                   help="a ViT tower's config.json (default: the evaluated tower's, from the hub cache, or "
                        "LanguageBind_Image's shipped copy for that tower)")
    p.add_argument("--results", type=Path, default=Path("runs/demo/eval/results.json"))
    p.add_argument("--trained_on", default="tconv", help="the generator the evaluated head was trained on")
    p.add_argument("--out", type=Path, default=Path("images"), help="folder for architecture.png and Fig1.png")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not args.results.is_file():
        print(f"{args.results}: no results; run `deepfake demo --out runs/demo` first", file=sys.stderr)
        return 1
    try:
        results = json.loads(args.results.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        print(f"{args.results}: unreadable results file: {exc}", file=sys.stderr)
        return 2
    print(draw_architecture(pipeline_boxes(results, args.config or vit_config(results.get("tower") or {})),
                            args.out / "architecture.png"))
    print(draw_results(args.results, args.out / "Fig1.png", args.trained_on))
    return 0


def vit_config(tower: dict) -> Path | None:
    """The config of the evaluated ViT tower: a local folder's, the hub cache's, or the shipped LanguageBind_Image one.

    ``None`` for towers that are not ViTs (the spectral one) or whose config is nowhere on this machine.
    """
    if tower.get("family") not in VIT_FAMILIES:
        return None
    model = str(tower.get("model", ""))
    if (Path(model) / "config.json").is_file():
        return Path(model) / "config.json"
    try:
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(model, "config.json") if model else None
        if isinstance(cached, str):
            return Path(cached)
    except (ImportError, ValueError):
        pass
    return SHIPPED_CONFIG if model == LANGUAGEBIND_IMAGE else None


if __name__ == "__main__":
    sys.exit(main())
