"""Draw the README figures.

    python -m deepfake.cli.figures --results runs/demo/eval/results.json

``images/architecture.png``: the pipeline, with layer sizes read from a tower config
(default: the LanguageBind_Image config in the hub cache, else the copy in ``images/``).
``images/Fig1.png``: per-generator AP of an evaluation, read from its ``results.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from deepfake.cli.args import CliParser
from deepfake.utils.fileio import atomic_write

IMAGES = Path(__file__).resolve().parent.parent / "images"
SHIPPED_CONFIG = IMAGES / "languagebind_image_config.json"


def tower_sizes(config_path: Path) -> dict:
    """Layer sizes of the tower in ``config_path`` (a LanguageBind or CLIP config.json)."""
    from deepfake.towers.clip_weights import vision_config_from

    vision, lora = vision_config_from(json.loads(config_path.read_text()), str(config_path))
    return {"hidden": vision.hidden_size, "layers": vision.num_hidden_layers, "heads": vision.num_attention_heads,
            "patch": vision.patch_size, "image": vision.image_size, "mlp": vision.intermediate_size,
            "act": vision.hidden_act, "proj": vision.projection_dim}


def _save(fig, path: Path) -> None:
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=130))


def draw_architecture(config_path: Path, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import FancyBboxPatch

    s = tower_sizes(config_path)
    tokens = (s["image"] // s["patch"]) ** 2 + 1
    boxes = [
        ("image", "any size, RGB\n(EXIF-rotated)", "#eeeeee"),
        ("preprocess", f"short side {s['image']}\nbicubic + center crop\nCLIP mean/std", "#dde8f5"),
        ("frozen tower", f"ViT {s['patch']}x{s['patch']} patches, {tokens} tokens\n{s['layers']} blocks x "
                         f"{s['heads']} heads\nhidden {s['hidden']}, MLP {s['mlp']} ({s['act']})\n"
                         f"projection {s['hidden']}->{s['proj']}", "#c9daf0"),
        ("feature cache", f"{s['proj']}-d fp16 per image\nsafetensors shards\n(extracted once)", "#fbe6c9"),
        ("MLP head", f"Linear({s['proj']},256)\nReLU, Dropout(0.1)\nLinear(256,2)", "#d5efd5"),
        ("P(fake)", "softmax[:, 1]\nvs threshold", "#f6d5d5"),
    ]
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
    p.add_argument("--config", type=Path, default=None, help="tower config.json (default: LanguageBind_Image's)")
    p.add_argument("--results", type=Path, default=Path("runs/demo/eval/results.json"))
    p.add_argument("--trained_on", default="tconv", help="the generator the evaluated head was trained on")
    p.add_argument("--out", type=Path, default=IMAGES)
    return p


def main(argv: list[str] | None = None) -> int:
    p = build_parser()
    args = p.parse_args(argv)
    config = args.config or _languagebind_config()
    print(draw_architecture(config, args.out / "architecture.png"))
    if args.results.is_file():
        print(draw_results(args.results, args.out / "Fig1.png", args.trained_on))
    else:
        print(f"{args.results}: no results; run `python -m deepfake demo` first for Fig1.png", file=sys.stderr)
        return 1
    return 0


def _languagebind_config() -> Path:
    """The released config from the hub cache when present, else the copy shipped in images/."""
    try:
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache("LanguageBind/LanguageBind_Image", "config.json")
        if isinstance(cached, str):
            return Path(cached)
    except ImportError:
        pass
    return SHIPPED_CONFIG


if __name__ == "__main__":
    sys.exit(main())
