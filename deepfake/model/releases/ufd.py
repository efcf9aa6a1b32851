"""UniversalFakeDetect (Ojha, Li, Lee, CVPR 2023): the linear probe on CLIP ViT-L/14's image embedding."""

from deepfake.model.releases import Detector, Licence, register

register(Detector(
    name="ufd", title="UniversalFakeDetect",
    paper="Ojha, Li, Lee: Towards Universal Fake Image Detectors that Generalize Across Generative Models, CVPR 2023",
    year=2023, repository="WisconsinAIVision/UniversalFakeDetect", commit="76a0e3e60a8a06458707a625d269ba815a2e5919",
    path="pretrained_weights/fc_weights.pth", git_blob="2a8efc8e238bf5a491e4fd5999655ed5eb3bbb72", size=4083,
    sha256="477100745713bcc957beb2b40859536859b6483fd6301b3b9293151b194c7847",
    licence=Licence("MIT", "LICENSE"),
    trained_on="ProGAN, all 20 classes of ForenSynths (CNNDetection's training set)",
    kind="head", network="openai/clip-vit-large-patch14", tap="projected image embedding (768-d, not normalised)",
    preprocess="CenterCrop(224), no resize, CLIP mean and std",
    head="linear, one logit: Linear(768, 1)",
    protocol="validate.py: 1000 images per class and domain (100 where a class has fewer), CenterCrop(224), "
             "accuracy at 0.5 and AP per generator on the UFD benchmark",
    reproduce="deepfake test --checkpoint ufd --benchmark ufd --data_root /data/ufd --protocol ufd",
    release="ufd",
))
