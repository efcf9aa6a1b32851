"""Tiny-LaDeDa (Cavia, Horwitz, Reiss, Hoshen, 2024): the whole network, two releases (WildRF, ForenSynth).

Both files were read here (the shared fixture holds them byte for byte). Code and weights are under
Yissum's SOFTWARE RESEARCH LICENSE: research use only, no commercial use.
"""

from deepfake.model.releases import Detector, Licence, register

_COMMIT = "e734562bbb6763f5bb2951099e9dc9a38df5e7dd"
_LICENCE = Licence("Yissum SOFTWARE RESEARCH LICENSE", "LICENSE", research_only=True,
                   note="no commercial use; read it before redistributing anything")
_FILES = {
    "wildrf": ("WildRF", "f859d0a45dea6eba0f2e350ffdb5df6d0db13731", 11654,
               "5e063100564d2ddfe9bf48074e351c8f2b38855552574a18a0738e7f2a764d80",
               "WildRF training split (real and generated images from Reddit)", "wildrf"),
    "forensynth": ("ForenSynth", "71c15cfeeec8cd8add63681d8ae32f23f07f1c8e", 12405,
                   "4624258c70489cbff2778153ce6fc7f5ed16170b59a541a06dc3d4c759fd68a6",
                   "ProGAN, ForenSynths' training set (the standard protocol)", "forensynths"),
}


def _record(key: str) -> Detector:
    stem, blob, size, sha256, trained_on, benchmark = _FILES[key]
    protocol = ("test.py: Resize((256, 256)) bilinear, no crop, ImageNet mean and std, AP and accuracy at 0.5 "
                + ("per platform of WildRF's test split (reddit, twitter, facebook)" if key == "wildrf"
                   else "per generator of ForenSynths' test set"))
    return Detector(
        name=f"tiny-ladeda-{key}", title=f"Tiny-LaDeDa ({stem})",
        paper="Cavia, Horwitz, Reiss, Hoshen: Real-Time Deepfake Detection in the Real-World, 2024 (arXiv 2406.09398)",
        year=2024, repository="barcavia/RealTime-DeepfakeDetection-in-the-RealWorld", commit=_COMMIT,
        path=f"weights/Tiny_LaDeDa/{stem}_Tiny_LaDeDa.pth", git_blob=blob, size=size, sha256=sha256,
        licence=_LICENCE, trained_on=trained_on, kind="network", network="tiny-ladeda",
        tap="the pooled 8-d feature (the mean of every patch's feature)",
        preprocess="Resize((256, 256)) bilinear, no crop, ImageNet mean and std (the paper); or native size",
        head="its fc, Linear(8, 1), one logit", protocol=protocol,
        reproduce=f"deepfake test --checkpoint tiny-ladeda-{key} --benchmark {benchmark} --data_root /data/{benchmark}",
        family="tiny-ladeda")


register(*(_record(k) for k in _FILES))
