"""TCM: the mixed Transformer-CNN learned image codec, written on CompressAI building blocks.

J. Liu, H. Sun, J. Katto, "Learned Image Compression with Mixed Transformer-CNN
Architectures", CVPR 2023 (public code: github.com/jmliu206/LIC_TCM). This is an
independent implementation of the architecture described there:

- analysis/synthesis transforms made of *Transformer-CNN mixture* (TCM) blocks: a
  1x1 convolution splits the features into a residual-convolution branch and a Swin
  window-attention branch (window 8, alternately plain and shifted), a second 1x1
  convolution fuses them, plus a skip connection;
- a hyperprior (hyper-latent of 192 channels, EntropyBottleneck) whose transforms
  use TCM blocks with window 4;
- a channel-wise autoregressive entropy model (Minnen & Singh, ICIP 2020) over
  ``num_slices`` slices of the latent, each slice's mean and scale predicted from
  the hyperprior and the already decoded slices through a Swin-attention block
  (*SWAtten*) and three convolutions, with latent residual prediction (LRP).

The module and parameter names follow the layout of the public checkpoints, so the
released TCM weights (and SA-ICM's, Shindo et al., ICIP 2024, which are TCM models)
load with :func:`TCM.load_state_dict` after the ``module.`` prefix is stripped.
Checked once side by side with the SA-ICM release's model (github.com/final-0/SA-ICM
@95c598b, ``models/icm.py``, ``ICM()``: N=128, M=320): the same 1293 tensors, names and
shapes, and, with the same weights, the release's coder settings (64-scale table, zero
padding centred to 128: ``codecs/saicm_official.yaml``) and a 200x300 image, the same
rANS strings as its ``coding_m.py --real`` path.

Differences from the public code, both only where that code cannot run: window
attention pads the feature map to a multiple of the window and crops back (the
public code needs every attention input to be a multiple of its window, i.e. inputs
padded to 128 pixels, which :attr:`TCM.pad_multiple` still asks the codec for), and
drop-path is implemented here (the public code takes it from timm).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from compressai.ans import BufferedRansEncoder, RansDecoder
from compressai.entropy_models import EntropyBottleneck, GaussianConditional
from compressai.layers import (
    AttentionBlock,
    ResidualBlock,
    ResidualBlockUpsample,
    ResidualBlockWithStride,
    conv1x1,
    conv3x3,
    subpel_conv3x3,
)
from compressai.models import CompressionModel
from torch import Tensor, nn

__all__ = ["TCM", "TCM_SIZES", "ConvTransBlock", "SWAtten", "WindowAttention"]

#: N (half the channel width of the transforms) of the three published sizes
TCM_SIZES = {"small": 64, "medium": 96, "large": 128}


def _round(x: Tensor, straight_through: bool) -> Tensor:
    """Rounding; with ``straight_through`` the gradient passes unchanged (Theis et al., ICLR 2017)."""
    if straight_through:
        return x + (torch.round(x) - x).detach()
    return torch.round(x)


class DropPath(nn.Module):
    """Stochastic depth per sample (Huang et al., ECCV 2016); identity in eval mode or with p = 0."""

    def __init__(self, p: float = 0.0) -> None:
        super().__init__()
        self.p = float(p)

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.p == 0.0:
            return x
        keep = 1.0 - self.p
        shape = (x.shape[0],) + (1,) * (x.ndim - 1)
        return x * x.new_empty(shape).bernoulli_(keep) / keep


class WindowAttention(nn.Module):
    """Multi-head self-attention inside non-overlapping windows, optionally shifted (Swin, Liu et al. ICCV 2021).

    Works on channels-last maps ``(B, H, W, C)``. Each head adds a learned bias
    indexed by the relative offset of the two positions in the window. In a
    shifted block the map is rolled by half a window first, and pairs of
    positions that come from different parts of the unrolled map are masked out.
    """

    def __init__(self, dim: int, head_dim: int, window: int, shifted: bool) -> None:
        super().__init__()
        if dim % head_dim:
            raise ValueError(f"attention width {dim} is not a multiple of the head width {head_dim}")
        self.dim = dim
        self.head_dim = head_dim
        self.heads = dim // head_dim
        self.window = window
        self.shifted = shifted
        self.embedding_layer = nn.Linear(dim, 3 * dim)  # q, k, v for every head
        self.linear = nn.Linear(dim, dim)
        span = 2 * window - 1
        self.relative_position_params = nn.Parameter(torch.empty(self.heads, span, span))
        nn.init.trunc_normal_(self.relative_position_params, std=0.02)
        # offsets (dy, dx) between every query and key position of a window, shifted to 0..2w-2
        ys, xs = torch.meshgrid(torch.arange(window), torch.arange(window), indexing="ij")
        coords = torch.stack([ys.reshape(-1), xs.reshape(-1)], dim=1)
        offset = coords[:, None, :] - coords[None, :, :] + window - 1
        self.register_buffer("_offset_y", offset[..., 0].clone(), persistent=False)
        self.register_buffer("_offset_x", offset[..., 1].clone(), persistent=False)

    def _bias(self) -> Tensor:
        return self.relative_position_params[:, self._offset_y, self._offset_x]  # (heads, w*w, w*w)

    def _shift_mask(self, hp: int, wp: int, device: torch.device) -> Tensor:
        """(windows, w*w, w*w) True where a query/key pair straddles the wrap-around of the roll."""
        w, s = self.window, self.window // 2
        label = torch.zeros(hp, wp, dtype=torch.long, device=device)
        # after rolling by -s, the last s rows/columns come from the top/left edge of the map
        label[hp - s :, :] += 1
        label[:, wp - s :] += 2
        label = label.view(hp // w, w, wp // w, w).permute(0, 2, 1, 3).reshape(-1, w * w)
        return label[:, :, None] != label[:, None, :]

    def forward(self, x: Tensor) -> Tensor:
        b, h, wd, c = x.shape
        w = self.window
        pad_h, pad_w = (-h) % w, (-wd) % w
        if pad_h or pad_w:
            x = F.pad(x, (0, 0, 0, pad_w, 0, pad_h))
        hp, wp = h + pad_h, wd + pad_w
        if self.shifted:
            x = torch.roll(x, shifts=(-(w // 2), -(w // 2)), dims=(1, 2))
        nh, nw = hp // w, wp // w
        # (B, nh, w, nw, w, C) -> (B, windows, w*w, C)
        tokens = x.view(b, nh, w, nw, w, c).permute(0, 1, 3, 2, 4, 5).reshape(b, nh * nw, w * w, c)
        qkv = self.embedding_layer(tokens).view(b, nh * nw, w * w, 3, self.heads, self.head_dim)
        q, k, v = qkv.permute(3, 0, 4, 1, 2, 5).unbind(0)  # each (B, heads, windows, w*w, head_dim)
        scores = torch.matmul(q, k.transpose(-1, -2)) * self.head_dim**-0.5
        scores = scores + self._bias()[None, :, None]
        if self.shifted:
            scores = scores.masked_fill(self._shift_mask(hp, wp, x.device)[None, None], float("-inf"))
        out = torch.matmul(scores.softmax(dim=-1), v)  # (B, heads, windows, w*w, head_dim)
        out = out.permute(0, 2, 3, 1, 4).reshape(b, nh * nw, w * w, c)
        out = self.linear(out)
        out = out.view(b, nh, nw, w, w, c).permute(0, 1, 3, 2, 4, 5).reshape(b, hp, wp, c)
        if self.shifted:
            out = torch.roll(out, shifts=(w // 2, w // 2), dims=(1, 2))
        if pad_h or pad_w:
            out = out[:, :h, :wd, :].contiguous()
        return out


class SwinLayer(nn.Module):
    """Pre-norm transformer layer on channels-last maps: window attention, then a 4x MLP, both residual."""

    def __init__(self, dim: int, head_dim: int, window: int, shifted: bool, drop_path: float = 0.0) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(dim)
        self.msa = WindowAttention(dim, head_dim, window, shifted)
        self.ln2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))
        self.drop_path = DropPath(drop_path)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.drop_path(self.msa(self.ln1(x)))
        return x + self.drop_path(self.mlp(self.ln2(x)))


class ConvTransBlock(nn.Module):
    """The TCM block: a residual-conv branch and a Swin branch in parallel between two 1x1 convolutions."""

    def __init__(
        self, conv_dim: int, trans_dim: int, head_dim: int, window: int, drop_path: float, shifted: bool
    ) -> None:
        super().__init__()
        self.conv_dim = conv_dim
        self.trans_dim = trans_dim
        width = conv_dim + trans_dim
        self.conv1_1 = nn.Conv2d(width, width, kernel_size=1)
        self.conv1_2 = nn.Conv2d(width, width, kernel_size=1)
        self.conv_block = ResidualBlock(conv_dim, conv_dim)
        self.trans_block = SwinLayer(trans_dim, head_dim, window, shifted, drop_path)

    def forward(self, x: Tensor) -> Tensor:
        local, nonlocal_ = self.conv1_1(x).split((self.conv_dim, self.trans_dim), dim=1)
        # the public model adds the branch input once more on top of ResidualBlock's own skip
        local = self.conv_block(local) + local
        nonlocal_ = self.trans_block(nonlocal_.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        return x + self.conv1_2(torch.cat((local, nonlocal_), dim=1))


class SwinPair(nn.Module):
    """A plain-window layer followed by a shifted-window layer, on channels-first maps."""

    def __init__(self, dim: int, head_dim: int, window: int, drop_path: float = 0.0) -> None:
        super().__init__()
        self.block_1 = SwinLayer(dim, head_dim, window, shifted=False, drop_path=drop_path)
        self.block_2 = SwinLayer(dim, head_dim, window, shifted=True, drop_path=drop_path)

    def forward(self, x: Tensor) -> Tensor:
        y = self.block_2(self.block_1(x.permute(0, 2, 3, 1)))
        return y.permute(0, 3, 1, 2)


class SWAtten(AttentionBlock):
    """CompressAI's attention block (Cheng et al., CVPR 2020) with a Swin pair as its non-local branch.

    Used by TCM's entropy model: project to ``inter_dim`` channels, gate the
    residual-unit trunk ``conv_a`` by ``sigmoid(conv_b(swin(x)))``, add the input,
    project to ``out_dim``.
    """

    def __init__(self, in_dim: int, out_dim: int, head_dim: int, window: int, inter_dim: int = 128) -> None:
        super().__init__(N=inter_dim)
        self.in_conv = conv1x1(in_dim, inter_dim)
        self.non_local_block = SwinPair(inter_dim, head_dim, window)
        self.out_conv = conv1x1(inter_dim, out_dim)

    def forward(self, x: Tensor) -> Tensor:
        x = self.in_conv(x)
        gate = torch.sigmoid(self.conv_b(self.non_local_block(x)))
        return self.out_conv(self.conv_a(x) * gate + x)


def _tcm_stage(
    n: int, head_dim: int, window: int, depth: int, drop: Sequence[float], tail: nn.Module
) -> list[nn.Module]:
    """``depth`` TCM blocks (plain, shifted, plain, ...) on 2n channels, then ``tail`` (a resampling layer)."""
    blocks: list[nn.Module] = [
        ConvTransBlock(n, n, head_dim, window, drop[i], shifted=bool(i % 2)) for i in range(depth)
    ]
    return [*blocks, tail]


def _param_net(in_ch: int, out_ch: int) -> nn.Sequential:
    """Three 3x3 convolutions with GELU: the mean / scale / LRP predictors of the channel-wise model."""
    return nn.Sequential(
        conv3x3(in_ch, 224), nn.GELU(), conv3x3(224, 128), nn.GELU(), conv3x3(128, out_ch)
    )


class TCM(CompressionModel):
    """TCM (Liu et al., CVPR 2023) with a channel-wise autoregressive entropy model.

    Args:
        N: half the channel width of the transforms (64 / 96 / 128 for the small /
            medium / large models).
        M: latent channels (320).
        num_slices: slices of the channel-wise entropy model (5).
        max_support_slices: how many decoded slices condition the next one (5).
        depths: TCM blocks in each of the 6 transform stages (2 each).
        head_dims: attention head width of each stage.
        hyper_channels: channels of the hyper-latent (192).
        drop_path_rate: stochastic depth, linearly increasing over the blocks (0).
    """

    #: the codec pads inputs to this multiple (attention windows of the 1/64-scale hyper
    #: transforms then tile exactly, as in the public model)
    pad_multiple = 128

    def __init__(
        self,
        N: int = 128,
        M: int = 320,
        num_slices: int = 5,
        max_support_slices: int = 5,
        depths: Sequence[int] = (2, 2, 2, 2, 2, 2),
        head_dims: Sequence[int] = (8, 16, 32, 32, 16, 8),
        hyper_channels: int = 192,
        drop_path_rate: float = 0.0,
        window: int = 8,
        hyper_window: int = 4,
    ) -> None:
        super().__init__()
        if M % num_slices:
            raise ValueError(f"TCM: M={M} must be divisible by num_slices={num_slices}")
        if len(depths) != 6 or len(head_dims) != 6:
            raise ValueError("TCM: depths and head_dims need one entry per transform stage (6)")
        self.N, self.M = N, M
        self.num_slices = num_slices
        self.max_support_slices = max_support_slices
        drop = torch.linspace(0, drop_path_rate, sum(depths)).tolist()
        c = 2 * N

        def stage(i: int, tail: nn.Module) -> list[nn.Module]:
            start = sum(depths[:i])
            return _tcm_stage(N, head_dims[i], window, depths[i], drop[start : start + depths[i]], tail)

        self.g_a = nn.Sequential(
            ResidualBlockWithStride(3, c, stride=2),
            *stage(0, ResidualBlockWithStride(c, c, stride=2)),
            *stage(1, ResidualBlockWithStride(c, c, stride=2)),
            *stage(2, conv3x3(c, M, stride=2)),
        )
        self.g_s = nn.Sequential(
            ResidualBlockUpsample(M, c, 2),
            *stage(3, ResidualBlockUpsample(c, c, 2)),
            *stage(4, ResidualBlockUpsample(c, c, 2)),
            *stage(5, subpel_conv3x3(c, 3, 2)),
        )
        no_drop = [0.0] * max(depths)
        self.h_a = nn.Sequential(
            ResidualBlockWithStride(M, c, stride=2),
            *_tcm_stage(N, 32, hyper_window, depths[0], no_drop, conv3x3(c, hyper_channels, stride=2)),
        )
        self.h_mean_s = nn.Sequential(
            ResidualBlockUpsample(hyper_channels, c, 2),
            *_tcm_stage(N, 32, hyper_window, depths[3], no_drop, subpel_conv3x3(c, M, 2)),
        )
        self.h_scale_s = nn.Sequential(
            ResidualBlockUpsample(hyper_channels, c, 2),
            *_tcm_stage(N, 32, hyper_window, depths[3], no_drop, subpel_conv3x3(c, M, 2)),
        )
        s = M // num_slices
        support = [M + s * min(i, max_support_slices) for i in range(num_slices)]
        self.atten_mean = nn.ModuleList(nn.Sequential(SWAtten(ch, ch, 16, window)) for ch in support)
        self.atten_scale = nn.ModuleList(nn.Sequential(SWAtten(ch, ch, 16, window)) for ch in support)
        self.cc_mean_transforms = nn.ModuleList(_param_net(ch, s) for ch in support)
        self.cc_scale_transforms = nn.ModuleList(_param_net(ch, s) for ch in support)
        self.lrp_transforms = nn.ModuleList(_param_net(ch + s, s) for ch in support)
        self.entropy_bottleneck = EntropyBottleneck(hyper_channels)
        self.gaussian_conditional = GaussianConditional(None)

    @property
    def downsampling_factor(self) -> int:
        return 64

    # ---- shared pieces of forward / compress / decompress ----------------------------------
    def _support(self, latent: Tensor, decoded: list[Tensor]) -> Tensor:
        done = decoded if self.max_support_slices < 0 else decoded[: self.max_support_slices]
        return torch.cat([latent, *done], dim=1)

    def _slice_params(
        self, i: int, means: Tensor, scales: Tensor, decoded: list[Tensor], size: tuple[int, int]
    ) -> tuple[Tensor, Tensor, Tensor]:
        """(mean, scale, mean-support features) of slice ``i`` from the hyperprior and decoded slices."""
        mean_support = self.atten_mean[i](self._support(means, decoded))
        mu = self.cc_mean_transforms[i](mean_support)[:, :, : size[0], : size[1]]
        scale = self.cc_scale_transforms[i](self.atten_scale[i](self._support(scales, decoded)))
        return mu, scale[:, :, : size[0], : size[1]], mean_support

    def _refine(self, i: int, mean_support: Tensor, y_hat_slice: Tensor) -> Tensor:
        """Latent residual prediction: add a bounded correction predicted from the context."""
        lrp = self.lrp_transforms[i](torch.cat([mean_support, y_hat_slice], dim=1))
        return y_hat_slice + 0.5 * torch.tanh(lrp)

    # ---- training / estimation ----------------------------------------------------------------
    def forward(self, x: Tensor) -> dict[str, object]:
        """Reconstruction and likelihoods; latents are rounded (straight-through while training)."""
        ste = torch.is_grad_enabled()
        y = self.g_a(x)
        size = (y.shape[2], y.shape[3])
        z = self.h_a(y)
        _, z_likelihoods = self.entropy_bottleneck(z)
        medians = self.entropy_bottleneck._get_medians()
        z_hat = _round(z - medians, ste) + medians
        means, scales = self.h_mean_s(z_hat), self.h_scale_s(z_hat)
        decoded: list[Tensor] = []
        likelihoods = []
        mus, sigmas = [], []
        for i, y_slice in enumerate(y.chunk(self.num_slices, dim=1)):
            mu, scale, mean_support = self._slice_params(i, means, scales, decoded, size)
            _, lik = self.gaussian_conditional(y_slice, scale, mu)
            likelihoods.append(lik)
            y_hat_slice = _round(y_slice - mu, ste) + mu
            decoded.append(self._refine(i, mean_support, y_hat_slice))
            mus.append(mu)
            sigmas.append(scale)
        x_hat = self.g_s(torch.cat(decoded, dim=1))
        return {
            "x_hat": x_hat,
            "likelihoods": {"y": torch.cat(likelihoods, dim=1), "z": z_likelihoods},
            "para": {"means": torch.cat(mus, dim=1), "scales": torch.cat(sigmas, dim=1), "y": y},
        }

    # ---- real bitstreams ------------------------------------------------------------------------
    def _tables(self) -> tuple[list[list[int]], list[int], list[int]]:
        gc = self.gaussian_conditional
        return (
            gc.quantized_cdf.tolist(),
            gc.cdf_length.reshape(-1).int().tolist(),
            gc.offset.reshape(-1).int().tolist(),
        )

    def compress(self, x: Tensor) -> dict[str, object]:
        """Entropy-code one image batch: strings ``[[y], [z]]`` per image and the hyper-latent shape."""
        if x.shape[0] != 1:
            return self._compress_each(x)
        y = self.g_a(x)
        size = (y.shape[2], y.shape[3])
        z = self.h_a(y)
        z_strings = self.entropy_bottleneck.compress(z)
        z_hat = self.entropy_bottleneck.decompress(z_strings, z.shape[-2:])
        means, scales = self.h_mean_s(z_hat), self.h_scale_s(z_hat)
        cdf, cdf_lengths, offsets = self._tables()
        symbols: list[int] = []
        indexes: list[int] = []
        decoded: list[Tensor] = []
        for i, y_slice in enumerate(y.chunk(self.num_slices, dim=1)):
            mu, scale, mean_support = self._slice_params(i, means, scales, decoded, size)
            q = self.gaussian_conditional.quantize(y_slice, "symbols", mu)
            symbols.extend(q.reshape(-1).tolist())
            indexes.extend(self.gaussian_conditional.build_indexes(scale).reshape(-1).tolist())
            decoded.append(self._refine(i, mean_support, q + mu))
        encoder = BufferedRansEncoder()
        encoder.encode_with_indexes(symbols, indexes, cdf, cdf_lengths, offsets)
        return {"strings": [[encoder.flush()], z_strings], "shape": z.shape[-2:]}

    def _compress_each(self, x: Tensor) -> dict[str, object]:
        outs = [self.compress(x[i : i + 1]) for i in range(x.shape[0])]
        strings = [[s for o in outs for s in o["strings"][k]] for k in range(2)]  # type: ignore[index]
        return {"strings": strings, "shape": outs[0]["shape"]}

    def decompress(self, strings: Sequence[Sequence[bytes]], shape: Sequence[int]) -> dict[str, Tensor]:
        """Decode ``strings`` from :meth:`compress` (one image) back to ``x_hat`` in [0, 1]."""
        if len(strings[0]) != 1:
            raise ValueError("TCM.decompress decodes one image at a time")
        z_hat = self.entropy_bottleneck.decompress(strings[1], shape)
        means, scales = self.h_mean_s(z_hat), self.h_scale_s(z_hat)
        size = (z_hat.shape[2] * 4, z_hat.shape[3] * 4)
        cdf, cdf_lengths, offsets = self._tables()
        decoder = RansDecoder()
        decoder.set_stream(strings[0][0])
        decoded: list[Tensor] = []
        for i in range(self.num_slices):
            mu, scale, mean_support = self._slice_params(i, means, scales, decoded, size)
            index = self.gaussian_conditional.build_indexes(scale)
            values = decoder.decode_stream(index.reshape(-1).tolist(), cdf, cdf_lengths, offsets)
            q = torch.tensor(values, dtype=mu.dtype, device=mu.device).reshape(mu.shape)
            decoded.append(self._refine(i, mean_support, self.gaussian_conditional.dequantize(q, mu)))
        x_hat = self.g_s(torch.cat(decoded, dim=1)).clamp_(0, 1)
        return {"x_hat": x_hat}

    @classmethod
    def from_state_dict(cls, state_dict: dict[str, Tensor], **kwargs: object) -> TCM:
        """Build a TCM whose N and M are read from ``state_dict`` (other settings from ``kwargs``)."""
        n = state_dict["g_a.0.conv1.weight"].shape[0] // 2
        m = state_dict["g_a.9.weight"].shape[0]
        net = cls(N=n, M=m, **kwargs)  # type: ignore[arg-type]
        net.load_state_dict(state_dict)
        return net


def count_parameters(model: nn.Module) -> int:
    """Number of learnable parameters."""
    return sum(p.numel() for p in model.parameters())


