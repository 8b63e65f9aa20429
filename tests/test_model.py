"""The VGG family: the reference's architecture, layer names and parameter
counts, and that each fix switch builds what it says."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from gradflow.model import VGG, count_layers, layer_name, probed_parameters
from gradflow.params import ModelParams, ParamsError, Variant
from gradflow.loss import loss_fn

WIDTH = 32


def build(seed: int = 0, **switches) -> VGG:
    torch.manual_seed(seed)
    return VGG(Variant(**switches), ModelParams(filters=32, stages=3))


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def batch(n: int = 4, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def capture(model: nn.Module, module: nn.Module, x: torch.Tensor):
    """(input, output) of one module during model(x)."""
    seen = {}
    handle = module.register_forward_hook(lambda m, i, o: seen.update(x=i[0].detach(), out=o.detach()))
    try:
        model(x)
    finally:
        handle.remove()
    return seen["x"], seen["out"]


# --- the reference architecture -------------------------------------------------------------

@pytest.mark.parametrize("depth, convs, params, params_bn",
                         [(8, 7, 59_716, 60_100), (38, 37, 336_196, 338_500)])
def test_layer_and_parameter_counts(depth, convs, params, params_bn):
    plain, bn = build(depth=depth), build(depth=depth, batch_norm=True)
    assert count_layers(plain) == {"conv": convs, "linear": 1, "batch_norm": 1}
    assert count_layers(bn) == {"conv": convs, "linear": 1, "batch_norm": convs}
    assert n_params(plain) == params
    assert n_params(bn) == params_bn  # + 2F per extra BN
    assert plain.depth == depth == convs + 1


@pytest.mark.parametrize("depth", [8, 38])
def test_output_is_one_logit_per_class(depth):
    model = build(depth=depth)
    logits, aux = model(batch(3))
    assert logits.shape == (3, 100) and aux == []
    assert torch.isfinite(logits).all()


@pytest.mark.parametrize("depth", [10, 39, 2, 7, 9])
def test_a_bad_depth_is_refused_naming_it(depth):
    with pytest.raises(ParamsError, match=rf"depth {depth} is not 8 \+ 6k"):
        build(depth=depth)


def test_depth_follows_the_stage_count():
    # 2 stages: depth = 2 + 2 * (2b + 2) = 6 + 4b
    model = VGG(Variant(depth=10), ModelParams(filters=32, stages=2))
    assert count_layers(model)["conv"] == 9
    with pytest.raises(ParamsError, match="depth 8 is not 6 \\+ 4k"):
        VGG(Variant(depth=8), ModelParams(filters=32, stages=2))


def test_layer_names_follow_the_reference():
    names = [name for name, _ in probed_parameters(build(depth=8))]
    assert names == ["input_conv_conv_0", "input_conv_bn_0",
                     "reduction_block_0_conv_0", "reduction_block_0_conv_1",
                     "reduction_block_1_conv_0", "reduction_block_1_conv_1",
                     "reduction_block_2_conv_0", "reduction_block_2_conv_1", "logit_linear_layer"]
    names = [name for name, _ in probed_parameters(build(depth=38))]
    assert names[:4] == ["input_conv_conv_0", "input_conv_bn_0", "block_0_0_conv_0", "block_0_0_conv_1"]
    assert names[10:14] == ["block_0_4_conv_0", "block_0_4_conv_1", "reduction_block_0_conv_0",
                            "reduction_block_0_conv_1"]
    assert names[-3:] == ["reduction_block_2_conv_0", "reduction_block_2_conv_1", "logit_linear_layer"]
    assert len(names) == 39  # 37 convs, the entry BN, the linear layer
    with_bias = [name for name, _ in probed_parameters(build(depth=8), include_bias=True)]
    assert "reduction_block_0_conv_0_bias" in with_bias and "logit_linear_layer_bias" in with_bias
    assert layer_name("block_0_1.conv_0.weight") == "block_0_1_conv_0"


@pytest.mark.parametrize("switches", [{}, {"batch_norm": True}, {"dense": True}, {"deep_supervision": True}],
                         ids=["plain", "bn", "dense", "dsn"])
def test_probed_layers_are_in_forward_order(switches):
    """The gradient-flow plot's x axis is the probed order: it must be the order data flows."""
    model = build(depth=14, **switches)
    model.train()
    names = {m: layer_name(f"{n}.weight") for n, m in model.named_modules()}
    ran = []
    hooks = [m.register_forward_pre_hook(lambda m, i: ran.append(names[m]))
             for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear, nn.BatchNorm2d))]
    model(batch(2))
    for h in hooks:
        h.remove()
    probed = [name for name, _ in probed_parameters(model)]
    assert probed == ran


def test_plain_net_keeps_pytorch_default_init():
    """kaiming_uniform(a=sqrt(5)): Var[w] = 1/(3 fan_in), the root cause of the vanishing."""
    model = build(depth=38)
    conv = model.block_1_2.conv_0
    fan_in = WIDTH * 9
    assert conv.weight.var().item() == pytest.approx(1 / (3 * fan_in), rel=0.1)
    assert conv.weight.abs().max().item() <= 1 / math.sqrt(fan_in)


# --- the fix switches ------------------------------------------------------------------------

def test_batch_norm_after_every_conv_before_the_activation():
    model = build(depth=38, batch_norm=True)
    assert count_layers(model)["batch_norm"] == 37
    block = model.block_0_0
    assert isinstance(block.bn_0, nn.BatchNorm2d) and isinstance(block.bn_1, nn.BatchNorm2d)
    assert isinstance(model.reduction_block_1.bn_1, nn.BatchNorm2d)
    model.eval()
    x, out = capture(model, block, batch(2))
    expected = F.leaky_relu(block.bn_1(block.conv_1(F.leaky_relu(block.bn_0(block.conv_0(x))))))
    torch.testing.assert_close(out, expected)
    assert isinstance(build(depth=38).block_0_0.bn_0, nn.Identity)


@pytest.mark.parametrize("batch_norm", [False, True])
def test_residual_block_adds_its_input_before_the_last_activation(batch_norm):
    model = build(depth=14, residual=True, batch_norm=batch_norm).eval()
    block = model.block_1_0
    x, out = capture(model, block, batch(2))
    body = block.bn_1(block.conv_1(F.leaky_relu(block.bn_0(block.conv_0(x)))))
    torch.testing.assert_close(out, F.leaky_relu(body + x))
    assert not torch.allclose(out, F.leaky_relu(body), atol=1e-4)  # the skip matters
    # Reduction blocks keep no skip unless residual_reduction asks for one, as in the reference.
    red = model.reduction_block_1
    x, out = capture(model, red, batch(2))
    plain = F.leaky_relu(red.bn_1(red.conv_1(F.avg_pool2d(F.leaky_relu(red.bn_0(red.conv_0(x))), 2))))
    torch.testing.assert_close(out, plain)


def test_plain_block_has_no_skip():
    model = build(depth=14).eval()
    block = model.block_0_0
    x, out = capture(model, block, batch(2))
    torch.testing.assert_close(out, F.leaky_relu(block.conv_1(F.leaky_relu(block.conv_0(x)))))


def test_residual_reduction_skips_through_an_average_pool():
    model = build(depth=14, residual=True, residual_reduction=True).eval()
    red = model.reduction_block_0
    x, out = capture(model, red, batch(2))
    assert x.shape == (2, WIDTH, 32, 32) and out.shape == (2, WIDTH, 16, 16)
    body = red.conv_1(F.avg_pool2d(F.leaky_relu(red.conv_0(x)), 2))
    torch.testing.assert_close(out, F.leaky_relu(body + F.avg_pool2d(x, 2)))
    assert n_params(model) == n_params(build(depth=14))  # width stays F: no projection
    x, out = capture(model, model.reduction_block_2, batch(2))
    assert x.shape[-1] == 8 and out.shape[-1] == 4


def test_dense_transitions_take_all_earlier_outputs_of_the_stage():
    model = build(depth=38, dense=True)
    for s in range(3):
        assert not hasattr(model, f"dense_{s}_0")  # the first block sees the stage input only
        for i in range(1, 6):  # blocks 1..4 and the reduction block (i = 5)
            transition = getattr(model, f"dense_{s}_{i}").transition
            assert transition.in_channels == (i + 1) * WIDTH and transition.out_channels == WIDTH
            assert transition.kernel_size == (1, 1)
    assert count_layers(model)["conv"] == 37  # the 1x1 transitions are not counted in the depth
    # What the reduction block's transition sees: the stage input and the five block outputs.
    model.eval()
    seen = {}
    hooks = [model.block_0_0.register_forward_hook(lambda m, i, o: seen.update(stage_input=i[0], first=o)),
             model.block_0_4.register_forward_hook(lambda m, i, o: seen.update(fifth=o)),
             # a copy: forward appends to the list after the call
             model.dense_0_5.register_forward_hook(lambda m, i, o: seen.update(features=list(i[0])))]
    model(batch(2))
    for h in hooks:
        h.remove()
    features = seen["features"]
    assert len(features) == 6
    torch.testing.assert_close(features[0], seen["stage_input"])
    torch.testing.assert_close(features[1], seen["first"])
    torch.testing.assert_close(features[5], seen["fifth"])


def test_deep_supervision_heads_only_in_training():
    model = build(depth=14, deep_supervision=True)
    assert count_layers(model)["linear"] == 3  # two companion heads + the classifier
    x, y = batch(4), torch.tensor([1, 2, 3, 4])
    model.train()
    logits, aux = model(x)
    assert len(aux) == 2 and all(a.shape == (4, 100) for a in aux)
    assert not torch.allclose(aux[0], aux[1])
    with_aux, main = loss_fn(logits, aux, y, aux_weight=0.3, denominator=4)
    without, main0 = loss_fn(logits, aux, y, aux_weight=0.0, denominator=4)
    assert torch.equal(main, main0) and with_aux.item() != pytest.approx(without.item())
    expected = (F.cross_entropy(logits, y, reduction="sum")
                + 0.15 * sum(F.cross_entropy(a, y, reduction="sum") for a in aux)) / 4
    torch.testing.assert_close(with_aux, expected)
    with_aux.backward()
    assert model.aux_head_0.linear.weight.grad.abs().sum() > 0  # the companion loss trains
    model.eval()
    _, aux = model(x)
    assert aux == []


def test_kaiming_init_keeps_the_signal_variance():
    model = build(depth=38, init="kaiming")
    expected = 2 / (WIDTH * 9) / (1 + 0.01 ** 2)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d) and m.in_channels == WIDTH]
    assert len(convs) == 36
    for conv in convs:
        assert conv.weight.var().item() == pytest.approx(expected, rel=0.1)
        assert conv.bias is None or torch.all(conv.bias == 0)
    first = model.input_conv.conv_0.weight
    assert first.var().item() == pytest.approx(2 / 27 / (1 + 0.01 ** 2), rel=0.2)


def test_same_seed_same_weights():
    a, b = build(depth=14, seed=3), build(depth=14, seed=3)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    c = build(depth=14, seed=4)
    assert not torch.equal(a.block_0_0.conv_0.weight, c.block_0_0.conv_0.weight)
