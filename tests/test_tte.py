"""LIFT's five-crop test-time ensembling: the five views match torchvision's Resize + FiveCrop, and evaluation
averages a model's outputs over them."""
import pytest
import torch
from torchvision.transforms import v2

import lt_utils as lt
from lt_utils.augment import TensorAugment, preprocessing


def test_five_crops_match_torchvision():
    images = torch.randint(0, 256, (3, 3, 32, 40), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.3, 0.25)
    ours = TensorAugment(24, mean, std, train=False, test_resize=28, crops="five")(images)
    assert ours.shape == (5, 3, 3, 24, 24)
    resize = v2.Compose([v2.ToDtype(torch.float32, scale=True), v2.Resize(28, antialias=True), v2.Normalize(mean, std)])
    for i, image in enumerate(images):
        reference = torch.stack(v2.FiveCrop(24)(resize(image)))  # tl, tr, bl, br, center
        torch.testing.assert_close(ours[:, i], reference, atol=3e-5, rtol=0)  # float32 op order, after /std
    center = TensorAugment(24, mean, std, train=False, test_resize=28)(images)
    torch.testing.assert_close(ours[4], center)
    assert TensorAugment(24, mean, std, train=False, test_resize=28, crops="five")(images[0]).shape == (5, 3, 24, 24)
    with pytest.raises(ValueError, match="train=False"):
        TensorAugment(24, train=True, crops="five")


class Probe(torch.nn.Module):
    """A model whose logits are the mean pixel per channel: averaging over views is visible in its outputs."""
    image_size, mean, std = 16, (0.5,) * 3, (0.5,) * 3

    def forward(self, x):
        return x.mean(dim=(2, 3))


def test_predict_averages_the_model_over_the_five_views():
    images = torch.randint(0, 256, (4, 3, 20, 20), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    dataset = lt.data.InMemoryDataset(images, torch.arange(4) % 3, ["a", "b", "c"])
    model = Probe()
    five = preprocessing(model, train=False, five_crop=True)
    assert five.crops == "five" and five.test_resize == round(16 * 248 / 224)
    out = lt.metrics.predict(model, dataset, transform=five, progress=False, with_features=False)
    expected = model(five(images).flatten(0, 1)).view(5, 4, -1).mean(0)
    torch.testing.assert_close(out["logits"], expected)
    center = lt.metrics.predict(model, dataset, transform=preprocessing(model, train=False, native_size=False),
                                progress=False, with_features=False)
    assert not torch.allclose(out["logits"], center["logits"])
