"""NPR (Tan et al., CVPR 2024): the whole network (a truncated ResNet-50 on neighbouring-pixel residuals).

``NPR.pth`` (about 5.8 MB, the repository's root) is absent from the mirror this project read: its
git blob id, from the tree at the pinned commit, checks it, and its sha256 is recorded at import.
The repository states no licence.
"""

from deepfake.model.releases import Detector, Licence, register

register(Detector(
    name="npr", title="NPR",
    paper="Tan, Liu, Zhao, Wei, Gu, Liu, Wei: Rethinking the Up-Sampling Operations in CNN-based Generative "
          "Network for Generalizable Deepfake Detection, CVPR 2024",
    year=2024, repository="chuangchuangtan/NPR-DeepfakeDetection", commit="73cde1ced21291bfb504a2add2b53fbe99c4f433",
    path="NPR.pth", git_blob="2430d34a6d6a1143d46d4276a05536770b1a2a97", size=None, sha256=None,
    licence=Licence("none stated", None,
                    note="the repository grants no licence: ask its authors before any use beyond reading"),
    trained_on="ProGAN car, cat, chair, horse (ForenSynths, 4 classes)", kind="network", network="npr",
    tap="the pooled 512-d feature after layer2",
    preprocess="Resize((256, 256)) bilinear, no crop, ImageNet mean and std (ForenSynths, UFD, DiffusionForensics); "
               "native size for GANGen-Detection",
    head="its fc1, Linear(512, 1), one logit",
    protocol="test.py: every image, accuracy at 0.5 and AP per generator; Table 1 on ForenSynths' test set "
             "(8 generators)",
    reproduce="deepfake test --checkpoint npr --benchmark forensynths --data_root /data/forensynths",
    family="npr",
))
