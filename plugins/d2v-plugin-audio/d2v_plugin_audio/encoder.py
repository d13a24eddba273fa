"""The audio FeatureEncoder: waveform -> local features -> Transformer input (data2vec v1 audio).

``embed``: conv feature extractor -> LayerNorm(C) -> Linear(C -> D)  (the teacher's input when
``ema.teacher_input == "features"``). ``contextualize``: zero padded frames ->
``x + pos_conv(x)`` -> LayerNorm(D) -> dropout, the part of fairseq's ``TransformerEncoder``
before its layers. Parameter names map 1:1 onto transformers' ``Data2VecAudioModel``:

=====================================  ===========================================
this encoder                           ``Data2VecAudioModel``
=====================================  ===========================================
``feature_extractor.*``                ``feature_extractor.*``
``feature_projection.*``               ``feature_projection.*``
``pos_conv_embed.layers.{j}.conv.*``   ``encoder.pos_conv_embed.layers.{j}.conv.*``
``layer_norm.*``                       ``encoder.layer_norm.*``
``mask_embedding``                     ``masked_spec_embed``
=====================================  ===========================================

With ``alibi`` (data2vec 2.0 audio), ``contextualize`` also returns an ALiBi attention bias
scaled per head by the learned ``alibi_scale`` (no transformers counterpart).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from d2v_core import Batch, BuildContext, ConfigError, Context, DataError, FeatureEncoder, Features, alibi_bias

from d2v_plugin_audio.conv_feature_extractor import ConvFeatureExtractor, FeatureProjection, frame_padding_mask
from d2v_plugin_audio.options import AudioEncoderOptions
from d2v_plugin_audio.pos_conv import PositionalConvEmbedding


class AudioFeatureEncoder(FeatureEncoder):
    """Raw 16 kHz waveform (``batch["source"]`` (B, L), optional ``batch["padding_mask"]``
    (B, L) bool) to (B, T, D) frames at the conv stack's rate (50 Hz with the paper's stack).

    ``dropout`` is applied after the input LayerNorm (fairseq ``encoder.dropout``); ``norm_eps``
    is the eps of the feature-projection and input LayerNorms (transformers ``layer_norm_eps``).
    fairseq also pads T to a multiple of 2 before its layers; those steps are masked out of
    attention, so leaving it out changes no output.
    """

    num_prefix_tokens = 0

    def __init__(
        self, dim: int, options: AudioEncoderOptions | None = None, dropout: float = 0.1, norm_eps: float = 1e-5,
        heads: int = 12, activation_checkpointing: bool = False,
    ) -> None:
        super().__init__()
        opts = options or AudioEncoderOptions()
        if dim % opts.pos_conv_groups:
            raise ConfigError(
                f"model.dim ({dim}) must be divisible by encoder.pos_conv_groups ({opts.pos_conv_groups}); "
                f"change one of them"
            )
        self.dim = dim
        self.options = opts
        layers = opts.conv_layers()
        self.feature_extractor = ConvFeatureExtractor(layers, bias=opts.conv_bias, activation_checkpointing=activation_checkpointing)
        self.feature_projection = FeatureProjection(self.feature_extractor.out_channels, dim, eps=norm_eps)
        self.mask_embedding = nn.Parameter(torch.empty(dim).uniform_())  # fairseq mask_emb: U(0, 1)
        self.pos_conv_embed = PositionalConvEmbedding(dim, opts.pos_conv_depth, opts.pos_conv_kernel, opts.pos_conv_groups)
        self.layer_norm = nn.LayerNorm(dim, eps=norm_eps)
        self.dropout = nn.Dropout(dropout)
        self.heads = heads
        if opts.alibi:  # fairseq learned_alibi_scale_per_head: shape (1, heads, 1, 1)
            self.alibi_scale = nn.Parameter(torch.full((1, heads, 1, 1), opts.alibi_scale_init))
        else:
            self.alibi_scale = None
        self._alibi_cache: dict[tuple[int, str], Tensor] = {}

    def _alibi(self, length: int, device: torch.device) -> Tensor:
        key = (length, str(device))
        if key not in self._alibi_cache:  # the unscaled bias depends only on the length
            self._alibi_cache = {key: alibi_bias(length, self.heads, device).unsqueeze(0)}
        return self._alibi_cache[key] * self.alibi_scale.clamp_min(0).to(torch.float32)

    def output_lengths(self, num_samples: int | Tensor) -> int | Tensor:
        """Frames produced from ``num_samples`` samples."""
        return self.feature_extractor.output_lengths(num_samples)

    def embed(self, batch: Batch) -> Features:
        source = batch["source"]
        if source.dim() != 2:
            raise DataError(f"audio batch['source'] must be (batch, samples), got shape {tuple(source.shape)}")
        x = self.feature_extractor(source).transpose(1, 2)  # (B, T, C)
        padding_mask = frame_padding_mask(batch.get("padding_mask"), x.shape[1], self.feature_extractor.kernels_strides)
        return Features(self.feature_projection(x), padding_mask)

    def contextualize(self, x: Tensor, padding_mask: Tensor | None) -> Context:
        if padding_mask is not None and self.options.pos_conv_zero_pads:
            x = x.masked_fill(padding_mask.unsqueeze(-1), 0.0)  # pads must not leak into the pos conv
        x = x + self.pos_conv_embed(x)
        x = self.dropout(self.layer_norm(x))
        bias = None if self.alibi_scale is None else self._alibi(x.shape[1], x.device)
        return Context(x, padding_mask, bias)


def build_encoder(options: AudioEncoderOptions, ctx: BuildContext) -> AudioFeatureEncoder:
    """Factory named by the audio ModalitySpec: width, heads, dropout, LayerNorm eps and activation
    checkpointing (of the conv feature extractor) from the context."""
    return AudioFeatureEncoder(ctx.dim, options, dropout=ctx.dropout, norm_eps=ctx.norm_eps, heads=ctx.heads,
                               activation_checkpointing=ctx.activation_checkpointing)
