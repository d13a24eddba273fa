"""The image FeatureEncoder: BEiT/data2vec_vision patch embedding, CLS, mask token, relative bias.

Parameter names map one to one onto Hugging Face ``Data2VecVisionModel`` (spec section 3.2):
``patch_embed.proj.*`` -> ``embeddings.patch_embeddings.projection.*``, ``cls_token`` ->
``embeddings.cls_token``, ``mask_embedding`` (D,) -> ``embeddings.mask_token`` (1, 1, D),
``rel_pos_bias.relative_position_bias_table`` ->
``encoder.relative_position_bias.relative_position_bias_table``.

With ``position: sincos``, ``input_norm`` and ``init: mae`` it is data2vec 2.0's image encoder:
a fixed 2-D sine-cosine embedding (timm's ``build_sincos2d_pos_embed``: MAE's up to a fixed
order of the channels, which the learned patch projection absorbs) added before masking, CLS
drawn from N(0, 1), a LayerNorm over CLS + patches, no attention bias.
"""

from __future__ import annotations

import torch
from timm.layers import PatchEmbed
from timm.layers.pos_embed_sincos import build_sincos2d_pos_embed
from torch import Tensor, nn

from d2v_core import Batch, BuildContext, ConfigError, Context, DataError, FeatureEncoder, Features

from d2v_plugin_image.options import ImageEncoderOptions
from d2v_plugin_image.relative_position_bias import RelativePositionBias


def beit_trunc_normal_(tensor: Tensor, std: float) -> Tensor:
    """BEiT's init: a normal truncated at +-1 std (its ``trunc_normal_`` wrapper passes a=-std, b=std)."""
    return nn.init.trunc_normal_(tensor, mean=0.0, std=std, a=-std, b=std)


def mae_sincos_2d(side: int, dim: int) -> Tensor:
    """MAE's ``get_2d_sincos_pos_embed(dim, side)`` (fairseq ``examples/data2vec/models/mae.py``
    L370-L417): (side * side, dim); the first half of the channels encodes the column index
    (``grid[0]`` of ``np.meshgrid(grid_w, grid_h)``), the second the row index, each as
    ``[sin, cos]`` of ``pos / 10000 ** (2i / (dim / 2))``."""
    if dim % 4:
        raise ConfigError(f"the MAE sin-cos table needs model.dim divisible by 4, got {dim}")
    coords = torch.arange(side, dtype=torch.float64)
    grid_w, grid_h = torch.meshgrid(coords, coords, indexing="xy")  # np.meshgrid(grid_w, grid_h): w first

    def one_d(pos: Tensor, d: int) -> Tensor:
        omega = 1.0 / 10000 ** (torch.arange(d // 2, dtype=torch.float64) / (d / 2.0))
        out = pos.reshape(-1)[:, None] * omega[None, :]
        return torch.cat([out.sin(), out.cos()], dim=1)

    return torch.cat([one_d(grid_w, dim // 2), one_d(grid_h, dim // 2)], dim=1).float()


class ImageEncoder(FeatureEncoder):
    """Patches of a (B, 3, H, W) image batch to tokens, then CLS and the shared relative bias.

    ``embed`` gives (B, N, D) patch embeddings (Conv2d with bias, timm ``PatchEmbed``) on an
    (H/p, W/p) grid. ``apply_mask`` blends in the mask token as BEiT does,
    ``x * (1 - w) + mask_token * w``. ``contextualize`` prepends CLS (no absolute position
    embedding) and returns the (1, heads, N+1, N+1) relative position bias as ``attn_bias``,
    which the core Transformer adds to every layer's attention logits.
    """

    num_prefix_tokens = 1

    def __init__(
        self, dim: int, heads: int, image_size: int = 224, patch_size: int = 16, dropout: float = 0.0,
        init_std: float = 0.02, position: str = "relative", input_norm: bool = False, init: str = "beit",
        norm_eps: float = 1e-6,
    ) -> None:
        super().__init__()
        if position != "relative" and dim % 4:  # both sin-cos tables split the channels in 4
            raise ConfigError(f"encoder.position {position!r} needs model.dim divisible by 4, got {dim}")
        self.dim = dim
        self.image_size = image_size
        self.patch_embed = PatchEmbed(img_size=image_size, patch_size=patch_size, in_chans=3, embed_dim=dim)
        self.grid: tuple[int, int] = tuple(self.patch_embed.grid_size)  # type: ignore[assignment]
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.mask_embedding = nn.Parameter(torch.zeros(dim))
        if position == "relative":
            self.rel_pos_bias = RelativePositionBias(self.grid, heads)
        elif position == "sincos-mae":  # MAE's channel order, saved like fairseq's fixed_positional_encoder
            self.rel_pos_bias = None
            self.register_buffer("pos_embed", mae_sincos_2d(self.grid[0], dim).unsqueeze(0))
        else:  # fixed, derived from the grid: not saved
            self.rel_pos_bias = None
            self.register_buffer("pos_embed", build_sincos2d_pos_embed(list(self.grid), dim).unsqueeze(0), persistent=False)
        self.input_norm = nn.LayerNorm(dim, eps=norm_eps) if input_norm else None
        self.input_dropout = nn.Dropout(dropout)  # BEiT's pos_drop (drop_rate) after the CLS concat
        self.init_std = init_std
        self.init = init
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """``beit``: truncated normal (std 0.02) for the patch conv, CLS and mask token, zero conv
        bias; the relative position table stays zero. ``mae``: Xavier-uniform patch conv on its
        flattened weight, zero bias, CLS N(0, 1) (fairseq ``init_extra_token_zero: false``)."""
        nn.init.zeros_(self.patch_embed.proj.bias)
        if self.init == "mae":
            w = self.patch_embed.proj.weight
            nn.init.xavier_uniform_(w.view(w.shape[0], -1))
            nn.init.normal_(self.cls_token)
        else:
            beit_trunc_normal_(self.patch_embed.proj.weight, self.init_std)
            beit_trunc_normal_(self.cls_token, self.init_std)
        beit_trunc_normal_(self.mask_embedding, self.init_std)

    def embed(self, batch: Batch) -> Features:
        images = batch["image"]
        if images.dim() != 4 or images.shape[1] != 3:
            raise DataError(f"image batch must be (B, 3, H, W), got {tuple(images.shape)}")
        if tuple(images.shape[-2:]) != (self.image_size, self.image_size):
            raise DataError(
                f"images are {images.shape[-2]}x{images.shape[-1]} but the encoder expects "
                f"{self.image_size}x{self.image_size} (encoder.image_size)"
            )
        x = self.patch_embed(images.to(self.patch_embed.proj.weight.dtype))
        if self.rel_pos_bias is None:
            x = x + self.pos_embed.to(x.dtype)
        return Features(x, None, self.grid)

    def apply_mask(self, x: Tensor, mask: Tensor, generator: torch.Generator | None = None) -> Tensor:
        w = mask.to(device=x.device).unsqueeze(-1).to(x.dtype)
        return x * (1 - w) + self.mask_embedding.to(x.dtype) * w

    def contextualize(self, x: Tensor, padding_mask: Tensor | None) -> Context:
        n = self.grid[0] * self.grid[1]
        if x.shape[1] != n:
            raise ValueError(f"expected {n} patch tokens for a {self.grid[0]}x{self.grid[1]} grid, got {x.shape[1]}")
        cls = self.cls_token.to(x.dtype).expand(x.shape[0], -1, -1)
        x = torch.cat([cls, x], dim=1)
        if self.input_norm is not None:
            x = self.input_norm(x)
        x = self.input_dropout(x)
        if padding_mask is not None:
            padding_mask = torch.cat([padding_mask.new_zeros(padding_mask.shape[0], 1), padding_mask], dim=1)
        return Context(x, padding_mask, None if self.rel_pos_bias is None else self.rel_pos_bias())


def build_encoder(options: ImageEncoderOptions, ctx: BuildContext) -> ImageEncoder:
    """Factory of the image modality: width, heads, dropout and eps from the context, patches
    from the options (the record decoder refuses a different ``data.options.image_size``)."""
    o = options
    return ImageEncoder(
        dim=ctx.dim, heads=ctx.heads, image_size=o.image_size, patch_size=o.patch_size, dropout=ctx.dropout,
        init_std=o.init_std, position=o.position, input_norm=o.input_norm, init=o.init, norm_eps=ctx.norm_eps,
    )
