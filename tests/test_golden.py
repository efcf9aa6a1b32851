"""The command-line outputs of this checkout equal the golden files captured before the package refactor.

``tests/golden/make_golden.py`` ran the demo, a train -> test -> predict run and every ``--help`` on commit 8ff602d
and stored the normalized outputs in ``tests/data/golden/``. Here the same capture runs on this checkout, in a
tmp_path (every command runs there, with HOME and the caches there too: nothing is written into the repository),
and every file must equal its golden twin: text and JSON (as parsed objects) exactly except for floats, which
agree to ``FLOAT_RTOL``, after the refactor's intended changes (``INTENDED_TEXT``, ``INTENDED_JSON``) are made to the golden side.
Fields added on purpose whose values depend on the captured data (``INTENDED_NEW_KEYS``: paths, ``*`` for any
key) must be in the capture and are then left out of the comparison; the tests named beside them check their
values.
The capture takes a few minutes on 2 CPU cores (the demo's 40 epochs and 620 synthetic images dominate); both
tests share one capture. The floats are this machine's and torch build's: regenerate the goldens from the old
commit's worktree (``python tests/golden/make_golden.py``) before comparing on another machine.
"""

from __future__ import annotations

import difflib
import importlib.util
import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
GOLDEN = REPO / "tests" / "data" / "golden"

# What the refactor changed on purpose, applied to the pre-refactor goldens before comparing; nothing else may differ.
INTENDED_TEXT = {
    # The commands' descriptions name the modules they point to by their new paths.
    "help_predict.txt": [("(deepfake.scoring)", "(deepfake.model.scoring)")],
    "help_split.txt": [(":mod:`deepfake.layouts`", ":mod:`deepfake.data.layouts`")],
}
# Issue 19: the test command's --protocol flag (and --max_sample's help naming it); the legend no longer calls
# ufd_acc comparable with UFD's paper (its repository writes only AP and the accuracy at 0.5).
_PROTOCOL_HELP = ("  --max_sample MAX_SAMPLE\n                        at most N images per generator and class\n",
                  "  --protocol {ufd,cnndetection,aigcdetect}\n"
                  "                        evaluate as a published benchmark repository does: its preprocessing (ufd,\n"
                  "                        cnndetection: center crop 224 without resizing; aigcdetect: short side\n"
                  "                        256, then crop 224), sampling (ufd: 1000 images per class, 100 when a\n"
                  "                        class has fewer, equal counts), its uint8 blur, and its headline numbers\n"
                  "                        (accuracy at 0.5 and AP) printed first (default: none)\n"
                  "  --max_sample MAX_SAMPLE\n                        at most N images per generator and class (with "
                  "--protocol ufd: its\n                        max_sample, default 1000)\n")
_OLD_LEGEND = "ufd_acc: UniversalFakeDetect's validate.py procedure for the same idea, comparable with its paper; "
_NEW_LEGEND = ("ufd_acc: accuracy at the threshold UniversalFakeDetect's validate.py searches on these labels "
               "(find_best_threshold), also an oracle number: its repository writes only AP and the accuracy at 0.5 "
               "(ap.txt, acc0.txt), so compare those (--protocol ufd prints them first); ")
INTENDED_TEXT["help_test.txt"] = [(
    "                     [--threshold THRESHOLD] [--max_sample MAX_SAMPLE] [--seed SEED]\n"
    "                     [--calibrate_real DIR] [--target_fpr TARGET_FPR]\n"
    "                     [--jpeg_quality JPEG_QUALITY] [--gaussian_sigma GAUSSIAN_SIGMA]\n"
    "                     [--resize_scale RESIZE_SCALE] [--robustness] [--sweep_jpeg SWEEP_JPEG]\n"
    "                     [--sweep_sigma SWEEP_SIGMA] [--sweep_resize SWEEP_RESIZE]\n"
    "                     [--feature_layers FEATURE_LAYERS] [--no_plots] [--device DEVICE]\n"
    "                     [--precision {auto,fp32,bf16,fp16}] [--batch_size BATCH_SIZE]\n"
    "                     [--num_workers NUM_WORKERS] [--max_pixels MAX_PIXELS] [--decode {exact,fast}]\n"
    "                     [--quiet] [-v] [--cache_dir CACHE_DIR] [--no_cache] [--compile]\n",
    "                     [--threshold THRESHOLD] [--protocol {ufd,cnndetection,aigcdetect}]\n"
    "                     [--max_sample MAX_SAMPLE] [--seed SEED] [--calibrate_real DIR]\n"
    "                     [--target_fpr TARGET_FPR] [--jpeg_quality JPEG_QUALITY]\n"
    "                     [--gaussian_sigma GAUSSIAN_SIGMA] [--resize_scale RESIZE_SCALE]\n"
    "                     [--robustness] [--sweep_jpeg SWEEP_JPEG] [--sweep_sigma SWEEP_SIGMA]\n"
    "                     [--sweep_resize SWEEP_RESIZE] [--feature_layers FEATURE_LAYERS] [--no_plots]\n"
    "                     [--device DEVICE] [--precision {auto,fp32,bf16,fp16}]\n"
    "                     [--batch_size BATCH_SIZE] [--num_workers NUM_WORKERS]\n"
    "                     [--max_pixels MAX_PIXELS] [--decode {exact,fast}] [--quiet] [-v]\n"
    "                     [--cache_dir CACHE_DIR] [--no_cache] [--compile]\n"), _PROTOCOL_HELP]
INTENDED_TEXT["help_test_ClassifierHead.txt"] = [(
    "                              [--max_sample MAX_SAMPLE] [--seed SEED] [--calibrate_real DIR]\n"
    "                              [--target_fpr TARGET_FPR] [--jpeg_quality JPEG_QUALITY]\n"
    "                              [--gaussian_sigma GAUSSIAN_SIGMA] [--resize_scale RESIZE_SCALE]\n"
    "                              [--robustness] [--sweep_jpeg SWEEP_JPEG] [--sweep_sigma SWEEP_SIGMA]\n",
    "                              [--protocol {ufd,cnndetection,aigcdetect}] [--max_sample MAX_SAMPLE]\n"
    "                              [--seed SEED] [--calibrate_real DIR] [--target_fpr TARGET_FPR]\n"
    "                              [--jpeg_quality JPEG_QUALITY] [--gaussian_sigma GAUSSIAN_SIGMA]\n"
    "                              [--resize_scale RESIZE_SCALE] [--robustness]\n"
    "                              [--sweep_jpeg SWEEP_JPEG] [--sweep_sigma SWEEP_SIGMA]\n"), _PROTOCOL_HELP]
INTENDED_TEXT["test.txt"] = [(_OLD_LEGEND, _NEW_LEGEND)]
INTENDED_TEXT["demo.txt"] = [(_OLD_LEGEND, _NEW_LEGEND)]
# The bias audit counts the images smaller than the tower's input (256 px: the spectral tower's tiles),
# no longer smaller than a fixed 224.
INTENDED_JSON = {name: {("audit", "crop"): 256} for name in ("run.json", "results.json", "demo_run.json",
                                                             "demo_results.json")}
# Issue 19: the rine head (--head rine, --nproj), the ln_2 tap it reads, and `deepfake import`. A run's
# train_args record the new --nproj flag.
_RINE_HEAD_HELP = [
    ("                        layers head reads them; its default: all)\n",
     "                        layers head reads them; its default: all). With --head rine: the blocks\n"
     "                        whose ln_2 output it reads (1..N; default all)\n"),
    ("  --head {layers,linear,mlp}\n"
     "                        mlp: Linear-ReLU-Dropout-Linear on the final embedding (default); layers:\n"
     "                        per-block CLS tokens with learned block importance (RINE); linear: linear\n"
     "                        probe (UFD)\n"
     "  --proj_dim PROJ_DIM   layers head: shared projection width\n",
     "  --head {layers,linear,mlp,rine}\n"
     "                        mlp: Linear-ReLU-Dropout-Linear on the final embedding (default); layers:\n"
     "                        per-block CLS tokens with learned block importance (RINE-style); linear:\n"
     "                        linear probe (UFD); rine: RINE's exact head on every block's ln_2 CLS\n"
     "                        token (CLIP and LanguageBind towers)\n"
     "  --proj_dim PROJ_DIM   layers and rine heads: projection width\n"
     "  --nproj NPROJ         rine head: [Linear, ReLU, Dropout] stages in each of its two projections\n"),
]
INTENDED_TEXT["help_train.txt"] = [
    ("                      [--head {layers,linear,mlp}] [--proj_dim PROJ_DIM]\n",
     "                      [--head {layers,linear,mlp,rine}] [--proj_dim PROJ_DIM] [--nproj NPROJ]\n"),
    *_RINE_HEAD_HELP]
INTENDED_TEXT["help_train_ClassifierHead.txt"] = [
    ("                               [--head {layers,linear,mlp}] [--proj_dim PROJ_DIM]\n"
     "                               [--importance {block,feature}]\n",
     "                               [--head {layers,linear,mlp,rine}] [--proj_dim PROJ_DIM]\n"
     "                               [--nproj NPROJ] [--importance {block,feature}]\n"),
    *_RINE_HEAD_HELP]
INTENDED_TEXT["help_deepfake.txt"] = [(
    "  split    Turn flat real/fake folders into the ForenSynths layout: python -m deepfake split SRC OUT\n",
    "  split    Turn flat real/fake folders into the ForenSynths layout: python -m deepfake split SRC OUT\n"
    "  import   Import a published detector's released head as a run: deepfake import ufd|rine FILE --out RUN\n")]
# Serving: the bound Host names, the queue, the request pixel budget, connection and time limits (and their help).
INTENDED_TEXT["help_serve.txt"] = [
    ('usage: deepfake serve [-h] --checkpoint CHECKPOINT [--host HOST] [--port PORT]\n',
     'usage: deepfake serve [-h] --checkpoint CHECKPOINT [--host HOST] [--port PORT] [--allow_host NAME]\n'),
    ('                      [--max_pixels MAX_PIXELS] [--tiles [TILES]] [--threshold THRESHOLD]\n',
     '                      [--max_pixels MAX_PIXELS] [--max_request_pixels MAX_REQUEST_PIXELS]\n'
     '                      [--max_queue MAX_QUEUE] [--max_connections MAX_CONNECTIONS]\n'
     '                      [--timeout TIMEOUT] [--tiles [TILES]] [--threshold THRESHOLD]\n'),
    ('127.0.0.1 by default. It has no authentication: bind to another address only on a network\n'
     'where everyone who can reach it may use it.\n',
     "127.0.0.1 by default and answers only the names it is bound to (``--allow_host`` adds\n"
     "more), refuses POSTs from other web pages' origins, and bounds what it holds: a full queue\n"
     "(``--max_queue``) answers 503 with Retry-After. It has no authentication: bind to another\n"
     "address only on a network where everyone who can reach it may use it.\n"),
    ('  --port PORT\n',
     "  --port PORT\n"
     "  --allow_host NAME     also answer requests whose Host is NAME (repeatable; a reverse proxy's or\n"
     "                        a LAN name). Other Host names get 400 (default: loopback names and the\n"
     "                        --host address)\n"),
    ('                        refuse images with more pixels than this (default: 64000000)\n',
     "                        refuse images with more pixels than this (default: 64000000)\n"
     "  --max_request_pixels MAX_REQUEST_PIXELS\n"
     "                        pixels one request may have decoded, read from the files' headers; files\n"
     "                        past it are skipped with that reason. Also the most one scoring pass\n"
     "                        decodes (default: 128000000)\n"
     "  --max_queue MAX_QUEUE\n"
     "                        requests waiting to be scored; when full, more get 503 with Retry-After\n"
     "                        (default: 64)\n"
     "  --max_connections MAX_CONNECTIONS\n"
     "                        open connections; past it requests get 503 (default: 256)\n"
     "  --timeout TIMEOUT     seconds a client has to send a request's headers, and again its body;\n"
     "                        slower ones are dropped (408) (default: 60.0)\n"),
]
for _name, _train_args in (("best.json", ("train_args",)), ("demo_best.json", ("train_args",)),
                           ("run.json", ("config", "train_args")), ("demo_run.json", ("config", "train_args"))):
    INTENDED_JSON.setdefault(_name, {})[(*_train_args, "nproj")] = 4
# A checkpoint's config records the sha256 of its weights (normalized by make_golden: it follows every float).
for _name in ("best.json", "demo_best.json"):
    INTENDED_JSON[_name][("head_weights_sha256",)] = "<SHA256>"


# Per-dimension standardisation of the head's features (--standardize, on by default for the spectral towers).
# The capture pins it off, the behaviour the goldens hold (PINNED); the runs record the flag in train_args and
# the resolved choice beside the head.
PINNED = ("--standardize", "off")
_STANDARDIZE_HELP = ("  --standardize {auto,on,off}\n"
                     "                        standardise each feature dimension with the training features' mean and\n"
                     "                        std, stored in the head (auto, the default: where the tower's record asks\n"
                     "                        for it, as the spectral towers' does)\n")
_IMPORTANCE_HELP = ("  --importance {block,feature}\n"
                    "                        layers head: one weight per block, or per block and feature (RINE's exact\n"
                    "                        estimator)\n")
INTENDED_TEXT["help_train.txt"] += [
    ("                      [--importance {block,feature}] [--contrastive_weight CONTRASTIVE_WEIGHT]\n",
     "                      [--importance {block,feature}] [--standardize {auto,on,off}]\n"
     "                      [--contrastive_weight CONTRASTIVE_WEIGHT]\n"),
    (_IMPORTANCE_HELP, _IMPORTANCE_HELP + _STANDARDIZE_HELP)]
INTENDED_TEXT["help_train_ClassifierHead.txt"] += [
    ("                               [--nproj NPROJ] [--importance {block,feature}]\n",
     "                               [--nproj NPROJ] [--importance {block,feature}]\n"
     "                               [--standardize {auto,on,off}]\n"),
    (_IMPORTANCE_HELP, _IMPORTANCE_HELP + _STANDARDIZE_HELP)]
INTENDED_TEXT["help_demo.txt"] = [
    ("                     [--num_epochs NUM_EPOCHS] [--seed SEED] [--overwrite]\n",
     "                     [--num_epochs NUM_EPOCHS] [--seed SEED] [--standardize {auto,on,off}]\n"
     "                     [--overwrite]\n"),
    ("  --seed SEED\n", "  --seed SEED\n" + _STANDARDIZE_HELP)]
for _name, _parents in (("best.json", ()), ("demo_best.json", ()), ("run.json", ("config",)),
                        ("demo_run.json", ("config",))):
    INTENDED_JSON[_name][(*_parents, "train_args", "standardize")] = "off"
    INTENDED_JSON[_name][(*_parents, "standardize")] = False

# `spectrum` reads colour since public sets of real photos chose it; the gray analysis the goldens hold is
# `spectrum-tiles256` (the same features), which the capture pins and the demo uses by default.
PINNED += ("--model", "spectrum-tiles256")
for _name, _parents in (("best.json", ()), ("demo_best.json", ()), ("run.json", ("config",)),
                        ("demo_run.json", ("config",))):
    INTENDED_JSON[_name][(*_parents, "train_args", "model")] = "spectrum-tiles256"
for _name, _parents in (("best.json", ()), ("demo_best.json", ()), ("run.json", ("config",)),
                        ("demo_run.json", ("config",)), ("results.json", ()), ("demo_results.json", ())):
    INTENDED_JSON[_name][(*_parents, "tower", "model")] = "spectrum-tiles256"


# The bias audit's hints follow the tower's preprocessing: `deepfake audit --model` (and --preprocess) name it.
INTENDED_TEXT["help_audit.txt"] = [
    ('                                [--label_dirs CLASS=NAMES [CLASS=NAMES ...]] [--crop CROP]\n',
     ('                                [--label_dirs CLASS=NAMES [CLASS=NAMES ...]] [--model MODEL]\n'
      '                                [--preprocess {resize,crop}] [--crop CROP]\n')),
    (('Per domain and class: file formats, JPEG quality (from the quantisation tables), image\n'
      'sizes and how many are smaller than the crop, colour modes, EXIF / camera metadata; then\n'
      'every real-vs-fake difference a detector could learn instead of generation artefacts, with\n'
      'a one-line explanation. Only headers are read; big classes are sampled (and it says so).\n'),
     ('Per domain and class: file formats and misnamed files, JPEG quality and whether the\n'
      'quantisation tables are the IJG standard ones, the distribution of image sizes and how many\n'
      "are smaller than the tower's input, colour modes, EXIF / camera metadata; then every\n"
      'real-vs-fake difference a detector could learn instead of generation artefacts, with a\n'
      'one-line explanation that follows the preprocessing of --model. Only headers are read; big\n'
      'classes are sampled (and it says so).\n')),
    ("  --crop CROP           the tower's input size (smaller images are counted)\n",
     ('  --model MODEL         the tower the images are for: its preprocessing decides the hints, e.g.\n'
      "                        'spectrum' (native pixels, never resized) (default:\n"
      '                        LanguageBind/LanguageBind_Image)\n'
      '  --preprocess {resize,crop}\n'
      "                        as for training: resize (the tower's own transform) or crop (default: the\n"
      "                        tower's record)\n"
      "  --crop CROP           the tower's input size; smaller images are counted (default: the --model\n"
      "                        record's)\n")),
]
# The bias audit compares the classes like a forensic examiner: each class records its distinct sizes, its files
# whose extension is not their format, and its JPEGs with non-standard quantisation tables (values checked by
# tests/test_audit.py); the report records the tower's preprocessing, which the hints follow (the spectral tower
# reads JPEG's 8x8 blocks unresized).
_AUDIT_CLASS_KEYS = [("distinct_sizes",), ("misnamed",), ("jpeg_quality", "nonstandard"),
                     ("jpeg_quality", "nonstandard_quality"), ("jpeg_quality", "nonstandard_distance")]
INTENDED_NEW_KEYS = {name: [(*group, "*", *key) for group in (("audit", "domains", "*"), ("audit", "pooled"))
                            for key in _AUDIT_CLASS_KEYS]
                     for name in ("run.json", "results.json", "demo_run.json", "demo_results.json")}
_SPECTRUM_JPEG_FLAG = ("compression strength separates the classes (--align jpeg:Q re-encodes both at one quality)",
                       "compression strength separates the classes (JPEG's 8x8 block grid reaches this tower "
                       "unresized; --align jpeg:Q re-encodes both at one quality)")
INTENDED_TEXT["test.txt"].append(_SPECTRUM_JPEG_FLAG)
for _name in ("run.json", "results.json", "demo_run.json", "demo_results.json"):
    INTENDED_JSON[_name][("audit", "preprocess")] = {"mode": "tiles", "size": 256, "grid": 4}
# Each flag records its explanation apart, so a report says it once however many domains share the finding.
for _name in ("run.json", "results.json", "demo_run.json", "demo_results.json"):
    INTENDED_NEW_KEYS[_name].append(("audit", "flags", "*", "hint"))
INTENDED_JSON["results.json"][("audit", "flags", 0, "message")] = (
    "JPEG quality: reals 20% JPEG at median quality 88, fakes 10% JPEG at median quality 93; "
    + _SPECTRUM_JPEG_FLAG[1])

# Released detectors by name: --checkpoint takes a name in test, predict, serve and push, and the commands
# import NAME and detectors.
INTENDED_TEXT.setdefault("help_deepfake.txt", []).append((
    "commands:\n"
    "  train    Train the deepfake classifier head on a frozen LanguageBind image tower\n"
    "  test     Evaluate a trained deepfake classifier head, per generator and category\n"
    "  predict  Score your own images: deepfake predict PATH... --checkpoint RUN\n"
    "  demo     One command, no downloads: build the synthetic benchmark, train on one generator, test on all\n"
    "  serve    A web page and JSON API for a trained head: deepfake serve --checkpoint RUN\n"
    "  push     Share a trained head on the Hugging Face hub: deepfake push RUN ORG/NAME\n"
    "  audit    Bias audit of a data set: python -m deepfake audit ROOT [--benchmark NAME --real_root DIR]\n"
    "  split    Turn flat real/fake folders into the ForenSynths layout: python -m deepfake split SRC OUT\n"
    "  import   Import a published detector's released head as a run: deepfake import ufd|rine FILE --out RUN\n",
    "commands:\n"
    "  train      Train the deepfake classifier head on a frozen LanguageBind image tower\n"
    "  test       Evaluate a trained deepfake classifier head, per generator and category\n"
    "  predict    Score your own images: deepfake predict PATH... --checkpoint RUN\n"
    "  demo       One command, no downloads: build the synthetic benchmark, train on one generator, test on all\n"
    "  serve      A web page and JSON API for a trained head: deepfake serve --checkpoint RUN\n"
    "  push       Share a trained head on the Hugging Face hub: deepfake push RUN ORG/NAME\n"
    "  audit      Bias audit of a data set: python -m deepfake audit ROOT [--benchmark NAME --real_root DIR]\n"
    "  split      Turn flat real/fake folders into the ForenSynths layout: python -m deepfake split SRC OUT\n"
    "  import     Import a released detector's file as a run: deepfake import NAME FILE [--out RUN]\n"
    "  detectors  List the released detectors this tool runs by name: deepfake detectors [--json]\n"))
INTENDED_TEXT.setdefault("help_test.txt", []).append((
    "  --checkpoint CHECKPOINT\n"
    "                        run directory (uses best) or checkpoint file\n",
    "  --checkpoint CHECKPOINT\n"
    "                        run directory (uses best), checkpoint file or a released detector's name\n"
    "                        (`deepfake detectors`)\n"))
INTENDED_TEXT.setdefault("help_predict.txt", []).append((
    "other file is listed with the reason it was skipped. ``--checkpoint`` takes a run\n"
    "directory, a checkpoint file, a saved head folder or a hub repo id. Exit status: 0 when\n",
    "other file is listed with the reason it was skipped. ``--checkpoint`` takes a run\n"
    "directory, a checkpoint file, a saved head folder, a hub repo id or a released detector's name\n"
    "(``ufd``, ``rine-4class``, ...: ``deepfake detectors``). Exit status: 0 when\n"))
INTENDED_TEXT.setdefault("help_predict.txt", []).append((
    "  --checkpoint CHECKPOINT\n"
    "                        run directory (uses best), checkpoint file, saved head folder or hub repo\n"
    "                        id\n",
    "  --checkpoint CHECKPOINT\n"
    "                        run directory (uses best), checkpoint file, saved head folder, hub repo id\n"
    "                        or a released detector's name (`deepfake detectors` lists them; fetched\n"
    "                        into the cache on first use)\n"))
INTENDED_TEXT.setdefault("help_serve.txt", []).append((
    "  --checkpoint CHECKPOINT\n"
    "                        run directory (uses best), checkpoint file, saved head folder or hub repo\n"
    "                        id\n",
    "  --checkpoint CHECKPOINT\n"
    "                        run directory (uses best), checkpoint file, saved head folder, hub repo id\n"
    "                        or a released detector's name (`deepfake detectors` lists them; fetched\n"
    "                        into the cache on first use)\n"))
INTENDED_TEXT.setdefault("help_push.txt", []).append((
    "positional arguments:\n"
    "  checkpoint            run directory (uses best), checkpoint file or saved head folder\n",
    "positional arguments:\n"
    "  checkpoint            run directory (uses best), checkpoint file, saved head folder or a\n"
    "                        released detector's name (`deepfake detectors`)\n"))
INTENDED_TEXT.setdefault("help_test_ClassifierHead.txt", []).append((
    "  --checkpoint CHECKPOINT\n"
    "                        run directory (uses best) or checkpoint file\n",
    "  --checkpoint CHECKPOINT\n"
    "                        run directory (uses best), checkpoint file or a released detector's name\n"
    "                        (`deepfake detectors`)\n"))


# The demo keeps its best and last checkpoints (not all 40 epochs), and names its head for predict.
INTENDED_TEXT["demo.txt"].append(("\nresults in demo/eval\n", "\nresults in demo/eval\nhead in demo/run: score your own "
                                  "images with `deepfake predict PATH --checkpoint demo/run`\n"))
INTENDED_JSON.setdefault("demo_best.json", {}).update({("train_args", "keep_last"): 1, ("training", "keep_last"): 1})
INTENDED_JSON["demo_run.json"].update({("config", "train_args", "keep_last"): 1, ("config", "training", "keep_last"): 1})


# RINE's protocol (--protocol rine) and its 20 test sets (the rine benchmark preset).
_RINE_PROTOCOL_HELP = [
    ("genimage, synthbuster, ufd, wildrf", "genimage, rine, synthbuster, ufd, wildrf"),
    ("  --protocol {ufd,cnndetection,aigcdetect}\n", "  --protocol {ufd,cnndetection,aigcdetect,rine}\n"),
    ("                        cnndetection: center crop 224 without resizing; aigcdetect: short side\n"
     "                        256, then crop 224), sampling (ufd: 1000 images per class, 100 when a\n"
     "                        class has fewer, equal counts), its uint8 blur, and its headline numbers\n"
     "                        (accuracy at 0.5 and AP) printed first (default: none)\n",
     "                        cnndetection, rine: center crop 224 without resizing; aigcdetect: short\n"
     "                        side 256, then crop 224), sampling (ufd: 1000 images per class, 100 when a\n"
     "                        class has fewer, equal counts; the others: every image), its uint8 blur,\n"
     "                        and its headline numbers (accuracy at 0.5 and AP) printed first; RINE's\n"
     "                        figures: --benchmark rine --protocol rine (default: none)\n")]
INTENDED_TEXT["help_test.txt"] += [
    ("[--threshold THRESHOLD] [--protocol {ufd,cnndetection,aigcdetect}]\n",
     "[--threshold THRESHOLD] [--protocol {ufd,cnndetection,aigcdetect,rine}]\n"), *_RINE_PROTOCOL_HELP]
INTENDED_TEXT["help_test_ClassifierHead.txt"] += [(
    "                              [--protocol {ufd,cnndetection,aigcdetect}] [--max_sample MAX_SAMPLE]\n"
    "                              [--seed SEED] [--calibrate_real DIR] [--target_fpr TARGET_FPR]\n"
    "                              [--jpeg_quality JPEG_QUALITY] [--gaussian_sigma GAUSSIAN_SIGMA]\n"
    "                              [--resize_scale RESIZE_SCALE] [--robustness]\n"
    "                              [--sweep_jpeg SWEEP_JPEG] [--sweep_sigma SWEEP_SIGMA]\n",
    "                              [--protocol {ufd,cnndetection,aigcdetect,rine}]\n"
    "                              [--max_sample MAX_SAMPLE] [--seed SEED] [--calibrate_real DIR]\n"
    "                              [--target_fpr TARGET_FPR] [--jpeg_quality JPEG_QUALITY]\n"
    "                              [--gaussian_sigma GAUSSIAN_SIGMA] [--resize_scale RESIZE_SCALE]\n"
    "                              [--robustness] [--sweep_jpeg SWEEP_JPEG] [--sweep_sigma SWEEP_SIGMA]\n"),
    *_RINE_PROTOCOL_HELP]


# Serving behind a reverse proxy: the proxies whose forwarded headers are believed, and further accepted origins.
INTENDED_TEXT["help_serve.txt"] += [
    ("usage: deepfake serve [-h] --checkpoint CHECKPOINT [--host HOST] [--port PORT] [--allow_host NAME]\n",
     "usage: deepfake serve [-h] --checkpoint CHECKPOINT [--host HOST] [--port PORT] [--allow_host NAME]\n"
     "                      [--forwarded_allow_ips ADDR] [--allow_origin URL]\n"),
    ("                        --host address)\n",
     "                        --host address)\n"
     "  --forwarded_allow_ips ADDR\n"
     "                        a reverse proxy's address or network (repeatable): its X-Forwarded-Proto\n"
     "                        and X-Forwarded-Host give the origin its page's uploads come from\n"
     "                        (default: none; those headers are ignored)\n"
     "  --allow_origin URL    also accept POSTs from this origin, e.g. https://detector.example.org\n"
     "                        (repeatable)\n")]


# The thread budget: --threads on every command that computes (a run's train_args record it), and --quiet
# also silences the progress lines logged where stderr is not a terminal.
_THREADS_HELP = {'help_demo.txt': [('                     [--num_epochs NUM_EPOCHS] [--seed SEED] [--standardize '
                    '{auto,on,off}]\n'
                    '                     [--overwrite]\n'
                    '\n',
                    '                     [--num_epochs NUM_EPOCHS] [--seed SEED] [--standardize '
                    '{auto,on,off}]\n'
                    '                     [--threads THREADS] [--overwrite]\n'
                    '\n'),
                   ("                        for it, as the spectral towers' does)\n"
                    '  --overwrite           reuse a non-empty --out\n',
                    "                        for it, as the spectral towers' does)\n"
                    '  --threads THREADS     compute threads of the main process (default: the CPUs this '
                    'process may\n'
                    '                        use, by affinity and cgroup quota, less the decoding workers and '
                    'what\n'
                    '                        other processes were measured to use of them; see '
                    'docs/performance.md)\n'
                    '  --overwrite           reuse a non-empty --out\n')],
 'help_predict.txt': [('                        [--precision {auto,fp32,bf16,fp16}] [--batch_size BATCH_SIZE]\n'
                       '                        [--num_workers NUM_WORKERS] [--max_pixels MAX_PIXELS]\n'
                       '                        [--decode {exact,fast}] [--quiet] [-v]\n',
                       '                        [--precision {auto,fp32,bf16,fp16}] [--batch_size BATCH_SIZE]\n'
                       '                        [--num_workers NUM_WORKERS] [--threads THREADS] [--max_pixels '
                       'MAX_PIXELS]\n'
                       '                        [--decode {exact,fast}] [--quiet] [-v]\n'),
                      ('                        image decoding worker processes (default: <N> on this '
                       'machine)\n'
                       '  --max_pixels MAX_PIXELS\n',
                       '                        image decoding worker processes (default: <N> on this '
                       'machine)\n'
                       '  --threads THREADS     compute threads of the main process (default: the CPUs this '
                       'process may\n'
                       '                        use, by affinity and cgroup quota, less the decoding workers '
                       'and what\n'
                       '                        other processes were measured to use of them; see '
                       'docs/performance.md)\n'
                       '  --max_pixels MAX_PIXELS\n'),
                      ("                        checkpoint's for test/predict\n"
                       '  --quiet               no progress bars; log warnings and errors only\n'
                       '  -v, --verbose         debug logging\n',
                       "                        checkpoint's for test/predict\n"
                       '  --quiet               no progress bars or progress lines; log warnings and errors '
                       'only\n'
                       '  -v, --verbose         debug logging\n')],
 'help_serve.txt': [('                      [--timeout TIMEOUT] [--tiles [TILES]] [--threshold THRESHOLD]\n'
                     '                      [--max_batch MAX_BATCH] [--device DEVICE] [--precision PRECISION] '
                     '[--quiet]\n'
                     '                      [-v]\n'
                     '\n',
                     '                      [--timeout TIMEOUT] [--tiles [TILES]] [--threshold THRESHOLD]\n'
                     '                      [--max_batch MAX_BATCH] [--device DEVICE] [--precision PRECISION]\n'
                     '                      [--threads THREADS] [--quiet] [-v]\n'
                     '\n'),
                    ("                        tower precision (default: the checkpoint's)\n"
                     '  --quiet               log warnings and errors only\n',
                     "                        tower precision (default: the checkpoint's)\n"
                     '  --threads THREADS     compute threads of the main process (default: the CPUs this '
                     'process may\n'
                     '                        use, by affinity and cgroup quota, less the decoding workers and '
                     'what\n'
                     '                        other processes were measured to use of them; see '
                     'docs/performance.md)\n'
                     '  --quiet               log warnings and errors only\n')],
 'help_test.txt': [('                     [--device DEVICE] [--precision {auto,fp32,bf16,fp16}]\n'
                    '                     [--batch_size BATCH_SIZE] [--num_workers NUM_WORKERS]\n'
                    '                     [--max_pixels MAX_PIXELS] [--decode {exact,fast}] [--quiet] [-v]\n',
                    '                     [--device DEVICE] [--precision {auto,fp32,bf16,fp16}]\n'
                    '                     [--batch_size BATCH_SIZE] [--num_workers NUM_WORKERS] [--threads '
                    'THREADS]\n'
                    '                     [--max_pixels MAX_PIXELS] [--decode {exact,fast}] [--quiet] [-v]\n'),
                   ('                        image decoding worker processes (default: <N> on this machine)\n'
                    '  --max_pixels MAX_PIXELS\n',
                    '                        image decoding worker processes (default: <N> on this machine)\n'
                    '  --threads THREADS     compute threads of the main process (default: the CPUs this '
                    'process may\n'
                    '                        use, by affinity and cgroup quota, less the decoding workers and '
                    'what\n'
                    '                        other processes were measured to use of them; see '
                    'docs/performance.md)\n'
                    '  --max_pixels MAX_PIXELS\n'),
                   ("                        checkpoint's for test/predict\n"
                    '  --quiet               no progress bars; log warnings and errors only\n'
                    '  -v, --verbose         debug logging\n',
                    "                        checkpoint's for test/predict\n"
                    '  --quiet               no progress bars or progress lines; log warnings and errors only\n'
                    '  -v, --verbose         debug logging\n')],
 'help_test_ClassifierHead.txt': [('                              [--batch_size BATCH_SIZE] [--num_workers '
                                   'NUM_WORKERS]\n'
                                   '                              [--max_pixels MAX_PIXELS] [--decode '
                                   '{exact,fast}] [--quiet] [-v]\n'
                                   '                              [--cache_dir CACHE_DIR] [--no_cache] '
                                   '[--compile]\n'
                                   '\n',
                                   '                              [--batch_size BATCH_SIZE] [--num_workers '
                                   'NUM_WORKERS]\n'
                                   '                              [--threads THREADS] [--max_pixels '
                                   'MAX_PIXELS]\n'
                                   '                              [--decode {exact,fast}] [--quiet] [-v] '
                                   '[--cache_dir CACHE_DIR]\n'
                                   '                              [--no_cache] [--compile]\n'
                                   '\n'),
                                  ('                        image decoding worker processes (default: <N> on '
                                   'this machine)\n'
                                   '  --max_pixels MAX_PIXELS\n',
                                   '                        image decoding worker processes (default: <N> on '
                                   'this machine)\n'
                                   '  --threads THREADS     compute threads of the main process (default: the '
                                   'CPUs this process may\n'
                                   '                        use, by affinity and cgroup quota, less the '
                                   'decoding workers and what\n'
                                   '                        other processes were measured to use of them; see '
                                   'docs/performance.md)\n'
                                   '  --max_pixels MAX_PIXELS\n'),
                                  ("                        checkpoint's for test/predict\n"
                                   '  --quiet               no progress bars; log warnings and errors only\n'
                                   '  -v, --verbose         debug logging\n',
                                   "                        checkpoint's for test/predict\n"
                                   '  --quiet               no progress bars or progress lines; log warnings '
                                   'and errors only\n'
                                   '  -v, --verbose         debug logging\n')],
 'help_train.txt': [('                      [--precision {auto,fp32,bf16,fp16}] [--batch_size BATCH_SIZE]\n'
                     '                      [--num_workers NUM_WORKERS] [--max_pixels MAX_PIXELS]\n'
                     '                      [--decode {exact,fast}] [--quiet] [-v]\n',
                     '                      [--precision {auto,fp32,bf16,fp16}] [--batch_size BATCH_SIZE]\n'
                     '                      [--num_workers NUM_WORKERS] [--threads THREADS] [--max_pixels '
                     'MAX_PIXELS]\n'
                     '                      [--decode {exact,fast}] [--quiet] [-v]\n'),
                    ('                        image decoding worker processes (default: <N> on this machine)\n'
                     '  --max_pixels MAX_PIXELS\n',
                     '                        image decoding worker processes (default: <N> on this machine)\n'
                     '  --threads THREADS     compute threads of the main process (default: the CPUs this '
                     'process may\n'
                     '                        use, by affinity and cgroup quota, less the decoding workers and '
                     'what\n'
                     '                        other processes were measured to use of them; see '
                     'docs/performance.md)\n'
                     '  --max_pixels MAX_PIXELS\n'),
                    ("                        checkpoint's for test/predict\n"
                     '  --quiet               no progress bars; log warnings and errors only\n'
                     '  -v, --verbose         debug logging\n',
                     "                        checkpoint's for test/predict\n"
                     '  --quiet               no progress bars or progress lines; log warnings and errors '
                     'only\n'
                     '  -v, --verbose         debug logging\n')],
 'help_train_ClassifierHead.txt': [('                               [--batch_size BATCH_SIZE] [--num_workers '
                                    'NUM_WORKERS]\n'
                                    '                               [--max_pixels MAX_PIXELS] [--decode '
                                    '{exact,fast}] [--quiet] [-v]\n'
                                    '                               [--extract_batch_size EXTRACT_BATCH_SIZE] '
                                    '[--cache_dir CACHE_DIR]\n',
                                    '                               [--batch_size BATCH_SIZE] [--num_workers '
                                    'NUM_WORKERS]\n'
                                    '                               [--threads THREADS] [--max_pixels '
                                    'MAX_PIXELS]\n'
                                    '                               [--decode {exact,fast}] [--quiet] [-v]\n'
                                    '                               [--extract_batch_size EXTRACT_BATCH_SIZE] '
                                    '[--cache_dir CACHE_DIR]\n'),
                                   ('                        image decoding worker processes (default: <N> on '
                                    'this machine)\n'
                                    '  --max_pixels MAX_PIXELS\n',
                                    '                        image decoding worker processes (default: <N> on '
                                    'this machine)\n'
                                    '  --threads THREADS     compute threads of the main process (default: the '
                                    'CPUs this process may\n'
                                    '                        use, by affinity and cgroup quota, less the '
                                    'decoding workers and what\n'
                                    '                        other processes were measured to use of them; see '
                                    'docs/performance.md)\n'
                                    '  --max_pixels MAX_PIXELS\n'),
                                   ("                        checkpoint's for test/predict\n"
                                    '  --quiet               no progress bars; log warnings and errors only\n'
                                    '  -v, --verbose         debug logging\n',
                                    "                        checkpoint's for test/predict\n"
                                    '  --quiet               no progress bars or progress lines; log warnings '
                                    'and errors only\n'
                                    '  -v, --verbose         debug logging\n')]}
for _name, _pairs in _THREADS_HELP.items():
    INTENDED_TEXT.setdefault(_name, []).extend(_pairs)
for _name, _parents in (("best.json", ()), ("demo_best.json", ()), ("run.json", ("config",)),
                        ("demo_run.json", ("config",))):
    INTENDED_JSON[_name][(*_parents, "train_args", "threads")] = None


# Numbers that say how sure they are: every trained head stores its out-of-distribution statistics (head.ood);
# each evaluation level has a pooled row, and each row its bootstrap intervals, small-domain mark and share flagged
# out of distribution (tests/test_certainty.py checks their values).
for _name, _parents in (("best.json", ()), ("demo_best.json", ()), ("run.json", ("config",)),
                        ("demo_run.json", ("config",)), ("results.json", ()), ("demo_results.json", ())):
    INTENDED_NEW_KEYS.setdefault(_name, []).append((*_parents, "head", "ood"))
for _name in ("results.json", "demo_results.json"):
    INTENDED_NEW_KEYS[_name] += [("bootstrap",), ("ood",), ("levels", "*", "pooled"), ("levels", "*", "mean", "ood"),
                                 ("levels", "*", "family_means", "*", "ood")]
    INTENDED_NEW_KEYS[_name] += [("levels", "*", "rows", "*", key) for key in
                                 ("ap_ci_low", "ap_ci_high", "acc_ci_low", "acc_ci_high", "small", "ood")]


def _drop_new_key(doc, path: tuple, where: str = "$") -> str | None:
    """Remove the intended new key at ``path`` (``*``: every key, or every item of a list) from ``doc``; the first
    place it is missing."""
    head, *rest = path
    if isinstance(doc, list) and head == "*" and rest:  # every item of a list
        return next(filter(None, (_drop_new_key(item, tuple(rest), f"{where}[{i}]") for i, item in enumerate(doc))),
                    None)
    if isinstance(doc, list) and head == "*" and rest:
        for i, item in enumerate(doc):
            if found := _drop_new_key(item, tuple(rest), f"{where}[{i}]"):
                return found
        return None
    if not isinstance(doc, dict):
        return f"{where}: not an object"
    if head != "*" and head not in doc:
        return f"{where}: the intended new key {head!r} is missing"
    for key in list(doc) if head == "*" else [head]:
        if not rest:
            del doc[key]
        elif found := _drop_new_key(doc[key], tuple(rest), f"{where}.{key}"):
            return found
    return None


def _load_make_golden():
    spec = importlib.util.spec_from_file_location("make_golden", REPO / "tests" / "golden" / "make_golden.py")
    module = importlib.util.module_from_spec(spec)
    dont_write = sys.dont_write_bytecode
    sys.dont_write_bytecode = True  # no __pycache__ beside the script
    try:
        spec.loader.exec_module(module)
    finally:
        sys.dont_write_bytecode = dont_write
    return module


make_golden = _load_make_golden()


@pytest.fixture(scope="module")
def captured(tmp_path_factory) -> Path:
    """The capture of this checkout, normalized like the golden files (one run for the whole module)."""
    base = tmp_path_factory.mktemp("golden")
    out = base / "out"
    make_golden.capture(out, REPO, work_dir=base / "work", pinned=PINNED)
    return out


# Since the capture the spectral tower computes its tiles one by one with a real FFT: the same features within
# float32 rounding (tests/test_spectrum.py compares them with the first formula), so scores, losses and thresholds
# move in their fifth digit. Anything that is not float rounding (a changed label, count, flag or option) still
# shows up: every other character must be equal.
FLOAT_RTOL = 1e-3
FLOAT_ATOL = 1e-12
_NUMBER = re.compile(r"-?\d+\.\d+(?:[eE][-+]?\d+)?|-?\d+[eE][-+]?\d+")


def _close(expected: float, actual: float) -> bool:
    return math.isclose(expected, actual, rel_tol=FLOAT_RTOL, abs_tol=FLOAT_ATOL) or (
        math.isnan(expected) and math.isnan(actual))


def _lines_match(expected: str, actual: str) -> bool:
    """Two text lines are equal outside their decimal numbers, and those agree to ``FLOAT_RTOL`` or to one unit
    of their last printed digit."""
    if _NUMBER.split(expected) != _NUMBER.split(actual):
        return False
    numbers = zip(_NUMBER.findall(expected), _NUMBER.findall(actual))
    return all(_close(float(e), float(a)) or abs(float(e) - float(a)) <= _last_digit(e) * 1.001 for e, a in numbers)


def _last_digit(printed: str) -> float:
    """One unit in the last printed place of a fixed-point number (0.0570 -> 1e-4): rounding may move it."""
    if "e" in printed.lower():
        return 0.0
    return 10.0 ** -len(printed.split(".")[1])


def _json_mismatch(expected, actual, where: str = "$") -> str | None:
    """The first place where two parsed JSON documents differ (floats to ``FLOAT_RTOL``, NaN equal to NaN), or None."""
    if isinstance(expected, float) and isinstance(actual, float):
        if _close(expected, actual):
            return None
        return f"{where}: expected {expected!r}, got {actual!r}"
    if type(expected) is not type(actual):
        return f"{where}: expected {type(expected).__name__} {expected!r}, got {type(actual).__name__} {actual!r}"
    if isinstance(expected, dict):
        # A JSON object's key order carries no meaning; it did change on purpose in train_args, which is
        # now the flattened typed config rather than the parsed command line (same keys, same values).
        if set(expected) != set(actual):
            return f"{where}: keys differ: expected {sorted(expected)}, got {sorted(actual)}"
        for key in expected:
            found = _json_mismatch(expected[key], actual[key], f"{where}.{key}")
            if found:
                return found
        return None
    if isinstance(expected, list):
        if len(expected) != len(actual):
            return f"{where}: expected {len(expected)} items, got {len(actual)}"
        for i, (e, a) in enumerate(zip(expected, actual)):
            found = _json_mismatch(e, a, f"{where}[{i}]")
            if found:
                return found
        return None
    return None if expected == actual else f"{where}: expected {expected!r}, got {actual!r}"


def _intended(name: str, expected: str) -> str:
    """The golden text with this refactor's intended changes made."""
    for old, new in INTENDED_TEXT.get(name, ()):
        assert old in expected, f"{name}: the intended change {old!r} -> {new!r} no longer applies"
        expected = expected.replace(old, new)
    if name in INTENDED_JSON:
        doc = json.loads(expected)
        for (*parents, key), value in INTENDED_JSON[name].items():
            node = doc
            for parent in parents:
                node = node[parent]
            node[key] = value
        expected = json.dumps(doc)
    return expected


def _mismatch(name: str, captured: Path) -> str | None:
    expected = _intended(name, (GOLDEN / name).read_text(encoding="utf-8"))
    actual_path = captured / name
    if not actual_path.is_file():
        return f"{name}: not written by the capture"
    actual = actual_path.read_text(encoding="utf-8")
    if name.endswith(".json"):
        actual_doc = json.loads(actual)
        for path in INTENDED_NEW_KEYS.get(name, ()):
            found = _drop_new_key(actual_doc, path)
            if found:
                return f"{name}: {found}"
        found = _json_mismatch(json.loads(expected), actual_doc)
        return f"{name}: {found}" if found else None
    expected_lines, actual_lines = expected.splitlines(), actual.splitlines()
    if len(expected_lines) == len(actual_lines) and all(map(_lines_match, expected_lines, actual_lines)):
        return None
    diff = difflib.unified_diff(expected.splitlines(keepends=True), actual.splitlines(keepends=True),
                                f"golden/{name}", f"captured/{name}")
    return "".join(diff)


def _golden_names(help_files: bool) -> list[str]:
    names = sorted(p.name for p in GOLDEN.iterdir() if p.is_file())
    return [n for n in names if n.startswith("help_") == help_files]


def _assert_all_match(names: list[str], captured: Path) -> None:
    assert names, f"no golden files in {GOLDEN}"
    problems = [found for name in names if (found := _mismatch(name, captured))]
    assert not problems, "\n".join(problems)


def test_demo_train_test_predict_outputs_match_the_pre_refactor_golden_files(captured):
    """stdout of demo/train/test/predict, best.json, run.json, results.json and the score CSVs are unchanged."""
    names = _golden_names(help_files=False)
    assert {"demo.txt", "train.txt", "test.txt", "predict.txt", "best.json", "run.json", "results.json",
            "scores.csv"} <= set(names)
    _assert_all_match(names, captured)


def test_every_command_help_matches_the_pre_refactor_golden_text(captured):
    """``deepfake --help``, ``deepfake COMMAND --help`` for every command and both scripts' --help are unchanged."""
    names = _golden_names(help_files=True)
    assert {f"help_{c}.txt" for c in make_golden.COMMANDS} <= set(names)
    _assert_all_match(names, captured)


def test_the_capture_writes_exactly_the_golden_file_set(captured):
    """No golden file is missing from the capture and the capture writes no file the goldens lack."""
    assert sorted(p.name for p in captured.iterdir()) == sorted(p.name for p in GOLDEN.iterdir() if p.is_file())


def test_the_capture_runs_precision_auto_as_on_a_cpu_without_bf16_whatever_the_cpu(tmp_path):
    """On a CPU with native bf16 ``--precision auto`` resolves to bf16 and the runs record it; the goldens hold fp32.

    A ``sitecustomize`` makes every Python started here see such a CPU; the capture's commands must still resolve
    ``auto`` to fp32, so the capture is the same on both kinds of CPU."""
    simulated = tmp_path / "bf16-cpu"
    simulated.mkdir()
    (simulated / "sitecustomize.py").write_text(
        "import deepfake.utils.runtime as runtime\nruntime.cpu_has_bf16 = lambda: True\n", encoding="utf-8")
    probe = tmp_path / "probe.py"
    probe.write_text("import torch\nfrom deepfake.utils.runtime import resolve_precision\n"
                     "print(resolve_precision('auto', torch.device('cpu')))\n", encoding="utf-8")
    env = make_golden._env(tmp_path, REPO)
    env["PYTHONPATH"] = f"{simulated}{os.pathsep}{REPO}"
    assert make_golden._run([str(probe)], tmp_path, env, []).strip() == "fp32"
    direct = subprocess.run([sys.executable, str(probe)], cwd=tmp_path, env=env, capture_output=True,
                            text=True, check=True)
    assert direct.stdout.strip() == "bf16"  # the simulated CPU is seen outside the capture


@pytest.mark.parametrize("has_bf16, expected", [(True, "bf16"), (False, "fp32")])
def test_a_run_records_what_precision_auto_resolved_to_on_this_cpu(tmp_path, monkeypatch, has_bf16, expected):
    """Both resolutions of ``--precision auto`` on the CPU: bf16 with native bf16, fp32 without; the checkpoint and
    run.json record the one used (what the golden capture pins to fp32)."""
    from deepfake.cli import train
    from deepfake.utils import runtime

    from .conftest import make_forensynths

    monkeypatch.setattr(runtime, "cpu_has_bf16", lambda: has_bf16)
    assert runtime.resolve_precision("auto", torch.device("cpu")) == expected
    data = make_forensynths(tmp_path / "data", n_train=4, n_val=2, n_test=1)
    out = tmp_path / "run"
    assert train.main(["--dataset_dir", str(data), "--output_dir", str(out), "--model", "spectrum-tiles256",
                       "--cache_dir", str(tmp_path / "cache"), "--num_epochs", "1", "--batch_size", "8",
                       "--num_workers", "0", "--precision", "auto", "--device", "cpu", "--quiet"]) == 0
    assert json.loads((out / "best.json").read_text())["features"]["precision"] == expected
    assert json.loads((out / "run.json").read_text())["config"]["features"]["precision"] == expected
