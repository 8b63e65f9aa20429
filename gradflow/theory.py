"""Mean-field prediction of the gradient flow at initialisation, from the architecture alone.

`predict(variant, model, input_second_moment=..., batch_size=...)` returns, for every layer the
probe measures (same names and order as `gradflow.model.probed_parameters`), the predicted
forward second moment of the layer's input and output, the second moment of the gradient
arriving at its output, and its weight gradient's mean |g|, for a training-mode forward and
backward pass of the mean cross-entropy over a batch of `batch_size` images, as
`gradflow.probe.probe` does. No data is needed beyond the input's second moment (a float), or,
optionally, the input's spatial covariance (`input_kernel`, measured from images).

The model (the infinite-width / random-weight limit of a CNN, e.g. Xiao et al. 2018, Novak et al.
2019; the backward pass under the usual gradient-independence assumption):

* A signal is described by its spatial covariance, averaged over channels: `same[p, p']` =
  E[x_n(p) x_n(p')] within one image, and `cross[p, p']` = E[x_n(p) x_m(p')] between two
  different images (needed only by BN, which subtracts a mean over the batch). Second moments
  alone are not enough: 2x2 average pooling keeps all of a spatially constant signal's second
  moment but only a quarter of a white one's, and the forward signal of a default-initialised
  net is mostly a per-channel constant (the leaky ReLU's mean and the biases), so pooling keeps
  ~2/3 to 1 of it, not 1/4. Tracking the covariance makes pooling exact instead of calibrated.
* conv (3x3, zero padding, zero-mean weights of variance Var[w], independent of the input):
  `K_out[p, p'] = C_in Var[w] sum_o K_in[p+o, p'+o] + Var[b]`, exact in expectation over the
  weights. It keeps white inputs white and constant ones constant; the zero padding loses
  signal at the border (a 3x3 conv at 8x8 keeps (22/24)^2 = 0.84 of it, at 4x4 0.69).
  PyTorch's default init (kaiming_uniform(a=sqrt(5))): Var[w] = 1 / (3 fan_in), bias Var[b] =
  1 / (3 fan_in); He init (init: kaiming): Var[w] = 2 / ((1 + 0.01^2) fan_in), Var[b] = 0.
  So a default conv keeps 1/3 of the second moment, a He conv 2 / (1 + a^2).
* leaky ReLU (slope a = 0.01) of a zero-mean Gaussian pre-activation (zero mean over the weight
  draws): the arc-cosine kernel, `E[phi(u) phi(v)] = (1-a)^2 sqrt(q_u q_v) / (2 pi)
  (sin t + (pi - t) cos t) + a E[uv]`, t = arccos(corr(u, v)). On the diagonal that is the
  familiar (1 + a^2) / 2; between uncorrelated positions (1 - a)^2 sqrt(q_u q_v) / (2 pi): the
  activation's mean, which is what makes the signal spatially coherent. Backward, the gradient
  covariance is multiplied by `E[phi'(u) phi'(v)] = ((1 + a^2)(pi - t) + 2 a t) / (2 pi)`.
* average pooling 2x2: the mean of the covariance over the 2x2 x 2x2 blocks (exact); backward,
  each input position gets a quarter of its window's gradient.
* BN (training mode, gamma = 1, beta = 0): subtracts the channel mean over batch and space (its
  covariance with each position is estimated from `cross`; the image's own 1/B share of the
  mean is neglected) and divides by the standard deviation, so the output has unit variance.
  Backward: the gradient divided by that standard deviation; the two projections BN's backward
  also subtracts (onto the constant and onto the normalised output) remove a 1/(B H W) share
  of a gradient that is uncorrelated across images, and are neglected.
* the head: global average pooling (the gradient of each position is 1/(H W) of the pooled
  feature's, fully correlated over space), a default-initialised linear layer (Var[W] =
  1 / (3 F)), and the mean softmax cross-entropy over B images. At initialisation the logits
  are nearly equal (the default head keeps them within ~0.1), so p ~ 1/C and the gradient at
  the logits, (p - onehot) / B, has E[sum_k (p_k - onehot_k)^2] = 1 - 1/C per image, i.e.
  (1 - 1/C) / (C B^2) per logit. Labels are independent of the images, so the gradients of two
  different images are uncorrelated (in expectation over the labels), and the batch sum of a
  weight gradient adds B independent terms.
* a weight gradient: a 3x3 conv's weight at offset o gets `g = sum_n sum_p delta_n(p)
  x_n(p + o)`, so E[g^2] = B sum_{p,p'} B_out[p, p'] K_in[p+o, p'+o] (forward and backward
  independent); a bias sum_n sum_p delta_n(p); a BN weight sum_n sum_p delta_n(p) xhat_n(p);
  the linear layer's weight B * E[delta_logit^2] * E[feature^2]. Under a Gaussian assumption
  mean |g| = sqrt(2 / pi) rms(g), averaged over the 9 offsets. That holds where the forward
  signal is incoherent (measured mean |g| / rms = 0.73 at VGG_38's input conv), but deeper the
  forward signal is mostly a per-channel constant m_c and the gate phi'(u) a per-channel
  constant too, so g[c', c] ~ m_c * S_c': a product of two rectified factors, half of each ~0,
  with mean |.| / rms = 0.71 * sqrt(2/pi) each (measured mean |g| / rms: 0.3-0.5 in the deep
  layers). `_tail` interpolates linearly in each factor's coherence (the share of its second
  moment common to all positions and images) between the two limits. `rms_grad` and
  `grad_norm` are the assumption-free predictions (compare with the probe's `grad_norm`).

No simple mean-field form, so `predict` returns None (draw nothing rather than a guess):
* residual connections (`residual`, `residual_reduction`, with or without BN). The sum itself
  is simple (an additive form, tried and removed): body's last conv has zero-mean weights independent of
  x, so the covariances add, forward (body + skip) and backward (through the body + through the
  skip). But the leaky ReLU after the sum sees `body + x` with x a previous leaky ReLU's output,
  mostly positive, not a zero-mean Gaussian: it passes most of the signal where the arc-cosine
  kernel halves it. Tried on VGG_38 + RC (seed 0, 200 synthetic images): first/last conv
  predicted 4.7e-4 against 0.19 measured, the input conv's BN 400x low; with
  residual_reduction too, every layer 25x or more low. Fixing it needs the non-zero-mean
  Gaussian expectations (bivariate normal CDFs per pair of positions): not done.
* dense connections: the 1x1 transition sees a concatenation of earlier outputs that share
  their weights' history (the block outputs are correlated with each other through the stage
  input), and their gradients reach the same tensors along several paths; a covariance model
  would have to track all pairwise cross-covariances of a stage.
* deep supervision: not modelled yet. Probably simple (each auxiliary head has its own
  weights, so its gradient covariance, scaled by (aux_weight / heads)^2, would add to the main
  path's at its stage output), but untried against a measurement, so None.

`biases=False` predicts the same network with every conv bias zero: the bias-free chain, where
inside a stage a weight's forward factor (shrinking ~1/6 per conv going deeper) and backward
factor (shrinking ~1/6 per conv going shallower) cancel. Its curve is flat up to a slow rise
with depth (the forward signal grows spatially coherent): VGG_38's predicted first/last conv
ratio is 0.1 (measured 0.5-1.5 over seeds 0-3), against 4e-14 with the biases.

Accuracy and known bias (VGG_08 and VGG_38, 200 synthetic images, seeds 0-3): the predicted
rms gradient is within ~5x of the measured one for every conv, with no systematic sign; mean |g|
(with the `_tail` factor) within ~0.3-6x. The deep end of a plain net is predicted too high
by up to ~5x on some seeds: the forward signal is mostly a per-channel constant carried by only
F = 32 channels, so each layer's gain is a random variable of few degrees of freedom and the
measured (typical) signal falls below the mean-field (average) one, a finite-width effect this
model leaves out. Forward second moments (VGG_38, seed 0): right after each reduction block
(where the biases reset the scale) within 1.3x; inside a stage the measured one wanders from the
mean-field one like a random walk, by the same finite-width effect, up to 6.6x high at the end
of stage 0, 0.2x low in stage 1 and 17x high in stage 2. Backward second moments: within
1-3.5x (predicted ~2-3x high through most of VGG_38). VGG_08: all within 0.55-1.8x.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from torch import nn

from gradflow.device import single_threaded
from gradflow.fixes import Fix, switched_on
from gradflow.model import VGG, ConvBlock, probed_parameters
from gradflow.params import ModelParams, Variant

SLOPE = 0.01  # F.leaky_relu's default negative slope
IMAGE_SIZE = 32
GAUSS_MEAN_ABS = math.sqrt(2 / math.pi)  # mean |g| / rms(g) for a zero-mean Gaussian


SHARE_RESOLUTION = 1e-12  # the smallest share 1 - cross / same resolves in float64


def _share(difference: float, same: float, total: float | None = None) -> float:
    """difference / total (total: same by default); NaN where difference / same is below
    SHARE_RESOLUTION (cancellation), 0 for a signal with no second moment."""
    if same <= 0:
        return 0.0
    if difference / same < SHARE_RESOLUTION:
        return math.nan
    return difference / (same if total is None else total)


@dataclass
class Kernel:
    """The channel-averaged spatial covariance of a signal, (H, W, H, W), float64: `same` within
    an image, `cross` between two different images."""
    same: torch.Tensor
    cross: torch.Tensor

    def second_moment(self) -> float:
        h, w = self.same.shape[:2]
        return self.same.reshape(h * w, h * w).diagonal().mean().item()

    def coherence(self) -> float:
        """The share of the second moment that is common to all positions and images: for a
        fixed network, a per-channel constant (the activations' mean, the biases)."""
        return min(max(self.cross.mean().item() / max(self.second_moment(), 1e-300), 0.0), 1.0)

    def signal_share(self) -> float:
        """The share of the second moment that differs between images, 1 - cross / same on the
        diagonal (positions): the mean-field form of gradflow.probe.signal_share, with the
        channels averaged before the ratio, not after. NaN below SHARE_RESOLUTION: the difference
        of two float64 moments that agree to 13 digits is rounding, not a share."""
        same = _diag(self.same).sum().item()
        return _share(same - _diag(self.cross).sum().item(), same)

    def map(self, f) -> "Kernel":
        return Kernel(f(self.same), f(self.cross))


@dataclass
class LayerPrediction:
    name: str  # as gradflow.model.probed_parameters names it
    kind: str  # conv | bias | bn_weight | bn_bias | linear | linear_bias
    mean_abs_grad: float
    q_in: float = math.nan  # forward second moment of the layer's input (conv, linear)
    q_out: float = math.nan  # of its output, before any BN and activation
    q_back: float = math.nan  # second moment of the gradient arriving at that output
    signal_share: float = math.nan  # of the layer's output (Kernel.signal_share)
    rms_grad: float = math.nan  # root mean square of the weight gradient's elements
    grad_norm: float = math.nan  # ||g||_2 = rms_grad * sqrt(number of elements)


@dataclass
class Prediction:
    layers: list[LayerPrediction] = field(default_factory=list)

    def mean_abs_grad(self) -> dict[str, float]:
        return {layer.name: layer.mean_abs_grad for layer in self.layers}

    def first_last_ratio(self) -> float:
        """First 3x3 conv's mean |g| over the last 3x3 conv's (the diagnosis' ratio)."""
        convs = [layer for layer in self.layers if layer.kind == "conv"]
        return convs[0].mean_abs_grad / convs[-1].mean_abs_grad


# --- one order of operations -----------------------------------------------------------------


# --- operations on covariances ------------------------------------------------------------

def _diag(k: torch.Tensor) -> torch.Tensor:
    h, w = k.shape[:2]
    return k.reshape(h * w, h * w).diagonal().reshape(h, w)


def _shift_sum(k: torch.Tensor) -> torch.Tensor:
    """sum over the 9 offsets o of k[p+o, p'+o], zero outside the image (3x3, padding 1)."""
    h, w = k.shape[:2]
    padded = torch.nn.functional.pad(k, (1, 1, 1, 1, 1, 1, 1, 1))
    out = torch.zeros_like(k)
    for dy in range(3):
        for dx in range(3):
            out += padded[dy:dy + h, dx:dx + w, dy:dy + h, dx:dx + w]
    return out


def _conv(k: Kernel, gain: float, bias_var: float) -> Kernel:
    return k.map(lambda t: gain * _shift_sum(t) + bias_var)


def _angle(cov: torch.Tensor, d: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    norm = torch.sqrt(d[:, :, None, None] * d[None, None, :, :]).clamp_min(1e-300)
    return torch.arccos((cov / norm).clamp(-1.0, 1.0)), norm


def _lrelu(k: Kernel) -> tuple[Kernel, torch.Tensor]:
    """(the activation's covariance, the covariance of its derivative) for pre-activation k."""
    d = _diag(k.same)

    def arccos_kernel(cov):
        t, norm = _angle(cov, d)
        return (1 - SLOPE) ** 2 * norm / (2 * math.pi) * (torch.sin(t) + (math.pi - t) * torch.cos(t)) \
            + SLOPE * cov

    t, _ = _angle(k.same, d)
    derivative = ((1 + SLOPE ** 2) * (math.pi - t) + 2 * SLOPE * t) / (2 * math.pi)
    return k.map(arccos_kernel), derivative


def _pool(k: torch.Tensor) -> torch.Tensor:
    h, w = k.shape[:2]
    return k.reshape(h // 2, 2, w // 2, 2, h // 2, 2, w // 2, 2).mean(dim=(1, 3, 5, 7))


def _unpool(b: torch.Tensor) -> torch.Tensor:
    for dim in range(4):
        b = b.repeat_interleave(2, dim=dim)
    return b / 16


def _batch_norm(k: Kernel) -> tuple[Kernel, float]:
    """(normalised covariance, the variance it was divided by)."""
    r = k.cross.mean(dim=(2, 3))  # covariance of each position with the channel mean
    m = r.mean()

    def centre(t):
        return t - r[:, :, None, None] - r[None, None, :, :] + m

    centred = k.map(centre)
    var = max(_diag(centred.same).mean().item(), 1e-300)
    return centred.map(lambda t: t / var), var


def _grad_rms2(back: torch.Tensor, fwd_in: torch.Tensor, batch: int) -> list[float]:
    """E[g^2] of a 3x3 conv weight at each of the 9 offsets."""
    h, w = back.shape[:2]
    padded = torch.nn.functional.pad(fwd_in, (1, 1, 1, 1, 1, 1, 1, 1))
    return [batch * (back * padded[dy:dy + h, dx:dx + w, dy:dy + h, dx:dx + w]).sum().item()
            for dy in range(3) for dx in range(3)]


# E|lrelu(z)| / rms(lrelu(z)) over sqrt(2/pi), z Gaussian: a rectified channel constant's
# mean |.| / rms relative to a Gaussian's.
RECTIFIED = (1 + SLOPE) / 2 / math.sqrt((1 + SLOPE ** 2) / 2)


def _tail(coherence: float) -> float:
    """mean |g| / rms(g) relative to the Gaussian sqrt(2/pi), for one factor of g (the forward
    input or the backward gate) of the given coherence: 1 for an incoherent factor (a sum over
    many positions and images: Gaussian), RECTIFIED for a per-channel constant that went through
    a leaky ReLU (half the channels ~0), linear in between."""
    return 1 - coherence * (1 - RECTIFIED)


def _row(name: str, kind: str, rms2: float | list[float], numel: int, tail: float = 1.0, **moments) -> LayerPrediction:
    """A layer's prediction from E[g^2] (one value, or one per 3x3 offset)."""
    values = rms2 if isinstance(rms2, list) else [rms2]
    rms = [math.sqrt(max(v, 0.0)) for v in values]
    mean_rms = math.sqrt(sum(r * r for r in rms) / len(rms))
    return LayerPrediction(name, kind, tail * GAUSS_MEAN_ABS * sum(rms) / len(rms), **moments,
                           rms_grad=mean_rms, grad_norm=mean_rms * math.sqrt(numel))


# --- the network --------------------------------------------------------------------------

def white_input(second_moment: float, size: int = IMAGE_SIZE) -> Kernel:
    """An input with the given second moment, uncorrelated between positions and images."""
    eye = torch.eye(size * size, dtype=torch.float64).reshape(size, size, size, size)
    return Kernel(second_moment * eye, torch.zeros_like(eye))


def _gram(rows: torch.Tensor, block: int = 64) -> torch.Tensor:
    """sum_r rows[r] (outer) rows[r], (P, P), each element added up in the order r = 0, 1, ...
    (an in-place multiply-add per row, over column blocks that stay in cache: 0.4 s for 600 x
    1024). Not a matrix product: BLAS (MKL on x86) picks its kernel and blocking by the machine
    and the buffers' alignment, and its order of addition with them."""
    size = rows.shape[1]
    out = torch.zeros(size, size, dtype=rows.dtype)
    for j in range(0, size, block):
        out_block, cols = out[:, j:j + block], rows[:, j:j + block]
        for r in range(len(rows)):
            out_block.addcmul_(rows[r, :, None], cols[r, None, :])
    return out


@single_threaded
def input_kernel(images: torch.Tensor) -> Kernel:
    """The input's covariance measured from a batch of normalised images (N, C, H, W)."""
    n, c, h, w = images.shape
    x = images.detach().to(torch.float64).reshape(n * c, h * w)
    same = _gram(x) / (n * c)
    total = x.reshape(n, c, h * w).sum(dim=0)  # (C, HW)
    cross = (_gram(total) / c - same * n) / (n * (n - 1))
    return Kernel(same.reshape(h, w, h, w), cross.reshape(h, w, h, w))


class _Conv:
    """A built 3x3 conv's mean-field form: its weights' variance from the initialisation, PyTorch's
    default or a fix's (gradflow.fixes: `conv_variance`)."""

    def __init__(self, name: str, conv: nn.Conv2d, fixes: list[Fix]):
        self.name, self.channels_in, self.channels_out = name, conv.in_channels, conv.out_channels
        fan_in = conv.in_channels * conv.kernel_size[0] * conv.kernel_size[1]
        self.w_var, self.b_var = _init_variance(fixes, fan_in)
        self.bias = conv.bias is not None
        self.rectified_input = True  # False for the stem: the images are not a leaky ReLU's output
        self.gate_coherence = 0.0  # of the pre-activation whose leaky ReLU gates the backward

    def forward(self, k: Kernel, biases: bool) -> Kernel:
        self.k_in = k
        out = _conv(k, self.channels_in * self.w_var, self.b_var if (self.bias and biases) else 0.0)
        self.q_out, self.share_out = out.second_moment(), out.signal_share()
        return out

    def backward(self, b: torch.Tensor, batch: int, rows: list) -> torch.Tensor:
        q_back = _diag(b).mean().item()
        gate = _tail(self.gate_coherence)
        tail = gate * (_tail(self.k_in.coherence()) if self.rectified_input else 1.0)
        rows.append(_row(self.name, "conv", _grad_rms2(b, self.k_in.same, batch),
                         self.channels_in * self.channels_out * 9, tail,
                         q_in=self.k_in.second_moment(), q_out=self.q_out, q_back=q_back,
                         signal_share=self.share_out))
        if self.bias:
            rows.append(_row(self.name + "_bias", "bias", batch * b.sum().item(), self.channels_out, gate,
                             q_back=q_back))
        return self.channels_out * self.w_var * _shift_sum(b)  # C_out Var[w], for the transpose


def _init_variance(fixes: list[Fix], fan_in: int) -> tuple[float, float]:
    """(Var[w], Var[b]) of a conv after initialisation: the first switched-on fix that says,
    else PyTorch's default (kaiming_uniform(a=sqrt(5)): 1 / (3 fan_in) for both). A fix that
    re-initialises the network without saying has no form here."""
    for fix in fixes:
        variance = fix.conv_variance(fan_in)
        if variance is not None:
            return variance
        if type(fix).initialise is not Fix.initialise:
            raise NotImplementedError(f"{fix.switch}: re-initialises the network but gives no conv_variance")
    return 1 / (3 * fan_in), 1 / (3 * fan_in)


class _BN:
    def __init__(self, name: str, norm: nn.Module):
        if not isinstance(norm, nn.BatchNorm2d):  # a fix claims a mean-field form this file lacks
            raise NotImplementedError(f"{name}: no mean-field form of {type(norm).__name__} here")
        self.name, self.channels = name, norm.num_features

    def forward(self, k: Kernel) -> Kernel:
        self.k_out, self.var = _batch_norm(k)
        return self.k_out

    def backward(self, b: torch.Tensor, batch: int, rows: list) -> torch.Tensor:
        rows.append(_row(self.name, "bn_weight", batch * (b * self.k_out.same).sum().item(), self.channels,
                         signal_share=self.k_out.signal_share()))
        rows.append(_row(self.name + "_bias", "bn_bias", batch * b.sum().item(), self.channels))
        return b / self.var


class _Block:
    """conv -> [BN] -> lrelu -> [pool] -> conv -> [BN] -> lrelu, as ConvBlock without a skip
    (residual blocks have no mean-field form here: `supported`)."""

    def __init__(self, name: str, block: ConvBlock, fixes: list[Fix]):
        self.reduce, self.name = block.reduce, name
        self.convs = [_Conv(f"{name}_conv_{i}", conv, fixes) for i, conv in enumerate((block.conv_0, block.conv_1))]
        self.bns = [None if isinstance(norm, nn.Identity) else _BN(f"{name}_bn_{i}", norm)
                    for i, norm in enumerate((block.bn_0, block.bn_1))]

    def forward(self, k: Kernel, biases: bool) -> Kernel:
        u = self.convs[0].forward(k, biases)
        if self.bns[0]:
            u = self.bns[0].forward(u)
        self.convs[0].gate_coherence = u.coherence()
        h, self.d0 = _lrelu(u)
        if self.reduce:
            h = h.map(_pool)
        u = self.convs[1].forward(h, biases)
        if self.bns[1]:
            u = self.bns[1].forward(u)
        self.convs[1].gate_coherence = u.coherence()
        out, self.d1 = _lrelu(u)
        return out

    def backward(self, b: torch.Tensor, batch: int) -> tuple[torch.Tensor, list]:
        """(the gradient covariance at the block input, this block's rows in reverse order)."""
        rows: list = []
        b = b * self.d1
        if self.bns[1]:
            b = self.bns[1].backward(b, batch, rows)
        b = self.convs[1].backward(b, batch, rows)
        if self.reduce:
            b = _unpool(b)
        b = b * self.d0
        if self.bns[0]:
            b = self.bns[0].backward(b, batch, rows)
        b = self.convs[0].backward(b, batch, rows)
        return b, rows


def _in_model_order(rows: list, net: VGG) -> list:
    """Rows in the order of gradflow.model.probed_parameters."""
    rank = {name: i for i, (name, _) in enumerate(probed_parameters(net, include_bias=True))}
    missing = [r.name for r in rows if r.name not in rank]
    if missing:
        raise AssertionError(f"theory rows not in the model: {missing}")
    return sorted(rows, key=lambda r: rank[r.name])


def supported(variant: Variant) -> bool:
    """False where a switched-on fix has no mean-field form here (gradflow/fixes.py says which:
    residual, dense, deep supervision; see the module docstring)."""
    return all(f.mean_field for f in switched_on(variant))


@single_threaded
def predict(variant: Variant, model: ModelParams, *, input_second_moment: float | None = None,
            input_kernel: Kernel | None = None, batch_size: int, biases: bool = True,
            include_bias: bool = False) -> Prediction | None:
    """Per-layer prediction at initialisation (see the module docstring), or None for a variant
    this model does not cover (residual, dense, deep supervision). Give the input's second moment (the
    input is then taken as uncorrelated between positions and images: the first BN removes its
    scale anyway, and the forward signal's coherence after it comes from the activations) or its
    measured covariance (`input_kernel(images)`)."""
    if not supported(variant):
        return None
    if input_kernel is None:
        if input_second_moment is None:
            raise ValueError("give input_second_moment or input_kernel")
        input_kernel = white_input(input_second_moment)
    # The network as gradflow.model builds it, on the meta device (no memory, and the global
    # random state is untouched): the prediction walks its layers instead of re-deriving them.
    with torch.device("meta"):
        net = VGG(variant, model)
    fixes = switched_on(variant)
    width, classes = net.logit_linear_layer.in_features, net.logit_linear_layer.out_features

    # forward
    stem = _Conv("input_conv_conv_0", net.input_conv.conv_0, fixes)
    stem.rectified_input = False
    stem_bn = _BN("input_conv_bn_0", net.input_conv.bn_0)
    k = stem_bn.forward(stem.forward(input_kernel, biases))
    stem.gate_coherence = k.coherence()
    k, stem_d = _lrelu(k)
    blocks = [_Block(name, module, fixes) for name, module in net.named_children()
              if isinstance(module, ConvBlock)]  # in forward order
    for block in blocks:
        k = block.forward(k, biases)
    h, w = k.same.shape[:2]
    q_features = k.same.mean().item()  # E[feature^2] after global average pooling
    # logit = W f + b, Var[w] = Var[b] = 1 / (3 width): its image-dependent part (1/3)(q - cross)
    # over its second moment (1/3) q + 1 / (3 width)
    share_logits = _share(q_features - k.cross.mean().item(), q_features, q_features + 1 / width)

    # the head and the loss
    q_logit = (1 - 1 / classes) / (classes * batch_size ** 2)  # per logit, per image
    head = [_row("logit_linear_layer", "linear", batch_size * q_logit * q_features, classes * width,
                 _tail(k.coherence()), q_in=q_features, q_back=q_logit, signal_share=share_logits),
            _row("logit_linear_layer_bias", "linear_bias", batch_size * q_logit, classes, q_back=q_logit)]
    q_pooled_back = classes * (1 / (3 * width)) * q_logit
    b = torch.full_like(k.same, q_pooled_back / (h * w) ** 2)

    # backward, collecting rows in reverse order
    reverse: list = []
    for block in reversed(blocks):
        b, rows = block.backward(b, batch_size)
        reverse += rows
    b = b * stem_d
    b = stem_bn.backward(b, batch_size, reverse)
    stem.backward(b, batch_size, reverse)
    rows = _in_model_order(reverse + head, net)
    if not include_bias:
        rows = [r for r in rows if not r.kind.endswith("bias")]
    return Prediction(rows)
