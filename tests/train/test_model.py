from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from segserve.train.model import ModelConfig, SegNetRT, count_parameters, predict_labels  # noqa: E402


@pytest.mark.parametrize("size", [(360, 480), (97, 131)])
def test_shapes(size: tuple[int, int]) -> None:
    net = SegNetRT(ModelConfig(num_classes=5))
    x = torch.randn(2, 3, *size)
    logits, aux = net.train()(x)
    assert logits.shape == (2, 5, *size) and aux.shape == (2, 5, *size)
    net.eval()
    ids = net.predict(x)
    assert ids.shape == (2, *size) and ids.dtype == torch.uint8 and int(ids.max()) < 5


def test_predict_labels_repeats_half_resolution_argmax() -> None:
    logits4 = torch.randn(1, 3, 4, 4)
    ids = predict_labels(logits4, (15, 16))
    assert ids.shape == (1, 15, 16)
    half = torch.nn.functional.interpolate(logits4, size=(8, 8), mode="bilinear").argmax(1)
    assert torch.equal(ids[:, ::2, ::2], half.to(torch.uint8))
    assert torch.equal(ids[:, 0:14:2, :], ids[:, 1:15:2, :])
    assert torch.equal(ids[:, :, 0::2], ids[:, :, 1::2])


def test_parameter_count_is_small() -> None:
    net = SegNetRT()
    assert 100_000 < count_parameters(net) < 1_500_000
    assert count_parameters(net, inference_only=False) > count_parameters(net)


def test_config_round_trip() -> None:
    cfg = ModelConfig(num_classes=7, detail=32)
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg


def test_per_image_input_norm_ignores_exposure_contrast_and_white_balance() -> None:
    torch.manual_seed(0)
    net = SegNetRT(ModelConfig(num_classes=5, input_norm="image")).eval()
    x = torch.randn(2, 3, 64, 96)
    # a darker, flatter, bluer frame: a different affine change per channel
    gain = torch.tensor([0.5, 0.7, 1.6]).view(1, 3, 1, 1)
    shifted = x * gain + torch.tensor([-1.0, 0.2, 0.8]).view(1, 3, 1, 1)
    assert torch.allclose(net(shifted), net(x), atol=1e-3)
    fixed = SegNetRT(ModelConfig(num_classes=5)).eval()
    fixed.load_state_dict(net.state_dict())
    assert not torch.allclose(fixed(shifted), fixed(x), atol=1e-3)


def test_input_norm_round_trips_and_old_configs_read_as_fixed() -> None:
    cfg = ModelConfig(num_classes=7, input_norm="image")
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg
    old = {k: v for k, v in ModelConfig().to_dict().items() if k != "input_norm"}
    assert ModelConfig.from_dict(old).input_norm == "fixed"
    with pytest.raises(ValueError, match="input_norm"):
        SegNetRT(ModelConfig(input_norm="frame"))


def test_row_channel_tells_the_network_where_each_row_lies_in_the_frame() -> None:
    from segserve.train.model import row_channel

    x = torch.zeros(2, 3, 4, 5)
    whole = row_channel(x)
    assert whole.shape == (2, 1, 4, 5)
    assert torch.allclose(whole[0, 0, :, 0], torch.tensor([0.125, 0.375, 0.625, 0.875]))
    assert torch.equal(whole[:, :, :, 0:1].expand(2, 1, 4, 5), whole)  # constant along each row
    crop = torch.tensor([[0.5, 0.6, 0.7, 0.8], [0.0, 0.1, 0.2, 0.3]])
    assert torch.equal(row_channel(x, crop)[:, 0, :, 3], crop)
    # the net reads it: the same pixels lower in the frame give other logits
    torch.manual_seed(0)
    net = SegNetRT(ModelConfig(num_classes=5, rows=True)).eval()
    img = torch.randn(1, 3, 32, 48)
    top, bottom = torch.linspace(0.0, 0.3, 32)[None], torch.linspace(0.7, 1.0, 32)[None]
    assert not torch.allclose(net(img, top), net(img, bottom))
    assert torch.allclose(net(img), net(img, (torch.arange(32) + 0.5)[None] / 32))
