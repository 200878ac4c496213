"""Data layer: preprocessing, the synthetic dataset and COCO loading.

Import from the submodules (``from edgefpn.data.preprocess import preprocess``). Nothing is
re-exported here on purpose: a package attribute ``preprocess`` would shadow the submodule of the
same name, and ``edgefpn.data`` must stay importable without torch on a device runtime.

* :mod:`edgefpn.data.preprocess` - letterbox, normalize, preprocess, box mapping (re-exports load_image)
* :mod:`edgefpn.data.images` - load_image, image_size: reading image files
* :mod:`edgefpn.data.synth` - the deterministic synthetic COCO dataset
* :mod:`edgefpn.data.coco` - COCO split loading and validation
* :mod:`edgefpn.data.torch_dataset` - torch Dataset + collate (the only module here that needs torch)
"""
