"""RINE (Koutlis & Papadopoulos, ECCV 2024): four released heads on CLIP ViT-L/14's ln_2 CLS tokens.

The 2-class file was read here (size and sha256); the other three are absent from the mirror this
project read, so their git blob ids (from the tree at the pinned commit) check them.
"""

from deepfake.model.releases import Detector, Licence, register

_COMMIT = "9b7fd5857cc205d0412be6aeee0d7611b95bd620"
_PROTOCOL = ("scripts/validation.py: every image of each test set (no sampling), CenterCrop(224), accuracy at 0.5 "
             "and AP per generator; the ProGAN-trained heads on the UFD benchmark's 19 sets plus StyleGAN2 "
             "(20 sets), the LDM head on Synthbuster with TenCrop(224) averaged (not implemented here)")
_TRAINED = {"1class": "ProGAN horse (ForenSynths, 1 class)", "2class": "ProGAN chair, horse (ForenSynths, 2 classes)",
            "4class": "ProGAN car, cat, chair, horse (ForenSynths, 4 classes)",
            "ldm": "Latent Diffusion training set of Corvi et al. (grip-unina/DMimageDetection)"}
_BLOBS = {"1class": ("802e8dce29925de10a8f4bfd96c4b627d0c0cdfe", None, None),
          "2class": ("b8418b5884fd1fc1dba79bea91f41ab2341673d8", 1139686,
                     "680d301b6d191da85b9dabcebf42cd3df20c5c669fa8320c498f835d02bf5ccb"),
          "4class": ("bf5cd4053b5eaf64a0bd52cdb6bd0dbd9a8bc457", None, None),
          "ldm": ("6b225b2aeae4f52e99a7fb675d8bcb736aea4a2e", None, None)}
_SIZES = {"1class": "nproj 4, proj_dim 1024", "2class": "nproj 4, proj_dim 128", "4class": "nproj 2, proj_dim 1024",
          "ldm": "nproj 4, proj_dim 1024"}


def _record(variant: str) -> Detector:
    blob, size, sha256 = _BLOBS[variant]
    benchmark = "synthbuster" if variant == "ldm" else "ufd"
    return Detector(
        name=f"rine-{variant}", title=f"RINE ({variant})",
        paper="Koutlis, Papadopoulos: Leveraging Representations from Intermediate Encoder-blocks for Synthetic "
              "Image Detection, ECCV 2024",
        year=2024, repository="mever-team/rine", commit=_COMMIT, path=f"ckpt/model_{variant}_trainable.pth",
        git_blob=blob, size=size, sha256=sha256, licence=Licence("Apache-2.0", "LICENSE"),
        trained_on=_TRAINED[variant], kind="head", network="openai/clip-vit-large-patch14",
        tap="the CLS token of every block's ln_2 output (24 x 1024), fp16 backbone",
        preprocess="CenterCrop(224), no resize, CLIP mean and std", head=f"rine ({_SIZES[variant]}), one logit",
        protocol=_PROTOCOL,
        reproduce=f"deepfake test --checkpoint rine-{variant} --benchmark {benchmark} --data_root /data/{benchmark} "
                  "--protocol cnndetection",
        release="rine", variant=variant)


register(*(_record(v) for v in ("1class", "2class", "4class", "ldm")))
