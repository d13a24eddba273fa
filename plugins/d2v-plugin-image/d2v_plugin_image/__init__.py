"""d2v image modality: data2vec ViT pretraining faithful to data2vec_vision (BEiT).

Registration lives in :mod:`d2v_plugin_image.plugin`; the torch parts (``encoder``,
``block_masker``, ``data``) are imported only when the core asks for them.
"""

__version__ = "0.1.0"
