"""Eq. 2, eq. 3, the pseudo-label rule and class entropy, against hand-computed values."""

import math

import numpy as np
import pytest
import torch

from tsp_model.core.scoring import (
    class_entropy,
    empty_image_score,
    image_score,
    scored_image_score,
    instance_score,
    mean_class_entropy,
    pseudo_label_keep,
)

# c, b, m = 0.9, 0.6, 0.3: mean 0.6; deviations +0.3, 0, -0.3;
# population var = (0.09 + 0 + 0.09) / 3 = 0.06; std = sqrt(0.06) = 0.2449490;
# s = 0.6 * exp(-0.2449490) = 0.6 * 0.7827445 = 0.4696467
S_A = 0.4696467
# c, b, m = 0.8, 0.8, 0.5: mean 0.7; deviations +0.1, +0.1, -0.2;
# var = (0.01 + 0.01 + 0.04) / 3 = 0.02; std = 0.1414214;
# s = 0.7 * exp(-0.1414214) = 0.7 * 0.8681234 = 0.6076864
S_B = 0.6076864


def test_instance_score_scalar_hand_computed():
    assert float(instance_score(0.9, 0.6, 0.3)) == pytest.approx(S_A, abs=1e-6)
    assert float(instance_score(0.8, 0.8, 0.5)) == pytest.approx(S_B, abs=1e-6)


def test_instance_score_uses_population_std():
    # With ddof=1 the std would be sqrt(0.18 / 2) = 0.3 and s = 0.6 * exp(-0.3) = 0.4444909.
    s = float(instance_score(0.9, 0.6, 0.3))
    assert s != pytest.approx(0.4444909, abs=1e-4)
    s_t = float(instance_score(torch.tensor(0.9), torch.tensor(0.6), torch.tensor(0.3)))
    assert s_t == pytest.approx(S_A, abs=1e-6)


def test_instance_score_equal_triplet_is_the_score():
    # std 0 -> exp(0) = 1 -> s = mean = 0.5
    assert float(instance_score(0.5, 0.5, 0.5)) == pytest.approx(0.5)


def test_instance_score_vectorized_torch_and_numpy_agree():
    c, b, m = [0.9, 0.8], [0.6, 0.8], [0.3, 0.5]
    s_np = instance_score(np.array(c), np.array(b), np.array(m))
    assert isinstance(s_np, np.ndarray) and s_np.shape == (2,)
    np.testing.assert_allclose(s_np, [S_A, S_B], atol=1e-6)
    s_t = instance_score(torch.tensor(c), torch.tensor(b), torch.tensor(m))
    assert isinstance(s_t, torch.Tensor) and s_t.shape == (2,)
    np.testing.assert_allclose(s_t.numpy(), s_np, atol=1e-6)


def test_instance_score_empty_and_differentiable():
    empty = torch.zeros(0)
    assert instance_score(empty, empty, empty).shape == (0,)
    c = torch.tensor([0.9, 0.5], requires_grad=True)
    b = torch.tensor([0.6, 0.5])
    m = torch.tensor([0.3, 0.5])
    instance_score(c, b, m).sum().backward()
    assert c.grad is not None and torch.isfinite(c.grad).all()
    # Raising c raises the mean; for the first (c above the mean) it also raises the std.
    # ds/dc = exp(-std) * (1/3 - mean * dstd/dc), dstd/dc = (c - mean) / (3 * std)
    # = 0.7827445 * (1/3 - 0.6 * 0.3 / (3 * 0.2449490)) = 0.7827445 * (0.3333333 - 0.2449490)
    # = 0.0691825; the second triplet is equal (std 0): gradient 1/3.
    assert c.grad[0].item() == pytest.approx(0.0691825, abs=1e-5)
    assert c.grad[1].item() == pytest.approx(1 / 3, abs=1e-6)


def test_image_score_hand_computed():
    # s = [0.4, 0.8]: mean 0.6, population std 0.2 (ddof=1 would give 0.2828427);
    # S = 0.6 * exp(-0.2) = 0.6 * 0.8187308 = 0.4912385
    assert float(image_score([0.4, 0.8])) == pytest.approx(0.4912385, abs=1e-6)
    assert float(image_score(np.array([0.4, 0.8]))) == pytest.approx(0.4912385, abs=1e-6)
    s_t = image_score(torch.tensor([0.4, 0.8]))
    assert isinstance(s_t, torch.Tensor) and s_t.dim() == 0
    assert s_t.item() == pytest.approx(0.4912385, abs=1e-6)


def test_image_score_single_instance_is_s():
    assert float(image_score([0.37])) == pytest.approx(0.37)
    assert image_score(torch.tensor([0.37])).item() == pytest.approx(0.37)


def test_image_score_empty_gets_empty_score():
    assert float(image_score([])) == 1.0
    assert float(image_score(np.zeros(0), empty_score=0.25)) == 0.25
    t = image_score(torch.zeros(0), empty_score=0.0)
    assert isinstance(t, torch.Tensor) and t.item() == 0.0


def test_pseudo_label_keep_all_three_thresholds():
    c = np.array([0.95, 0.95, 0.95, 0.85, 0.95])
    b = np.array([0.95, 0.85, 0.95, 0.95, 0.95])
    m = np.array([0.85, 0.85, 0.75, 0.85, 0.81])
    # kept only when every score passes: rows 0 and 4
    np.testing.assert_array_equal(pseudo_label_keep(c, b, m), [True, False, False, False, True])
    keep_t = pseudo_label_keep(torch.tensor(c), torch.tensor(b), torch.tensor(m))
    assert keep_t.dtype == torch.bool
    assert keep_t.tolist() == [True, False, False, False, True]


def test_pseudo_label_keep_boundary_is_not_kept():
    assert not pseudo_label_keep(0.9, 0.95, 0.95)  # c == sigma_c
    assert not pseudo_label_keep(0.95, 0.9, 0.95)  # b == sigma_b
    assert not pseudo_label_keep(0.95, 0.95, 0.8)  # m == sigma_m
    assert pseudo_label_keep(0.95, 0.95, 0.85)
    # custom thresholds
    assert pseudo_label_keep(0.6, 0.6, 0.6, sigma_c=0.5, sigma_b=0.5, sigma_m=0.5)
    assert not pseudo_label_keep(0.6, 0.6, 0.6, sigma_c=0.5, sigma_b=0.5, sigma_m=0.6)


def test_class_entropy_values():
    # uniform over 4 classes -> log 4 = 1.3862944; one-hot -> 0 (0 log 0 = 0);
    # [0.5, 0.25, 0.25, 0] -> -(0.5 ln 0.5 + 2 * 0.25 ln 0.25) = 0.3465736 + 0.6931472 = 1.0397208
    probs = [[0.25, 0.25, 0.25, 0.25], [1.0, 0.0, 0.0, 0.0], [0.5, 0.25, 0.25, 0.0]]
    expected = [math.log(4), 0.0, 1.0397208]
    h_np = class_entropy(np.array(probs))
    np.testing.assert_allclose(h_np, expected, atol=1e-6)
    h_t = class_entropy(torch.tensor(probs))
    assert h_t.shape == (3,) and torch.isfinite(h_t).all()
    np.testing.assert_allclose(h_t.numpy(), expected, atol=1e-6)


def test_mean_class_entropy():
    # mean of log 4 = 1.3862944 and 0 -> 0.6931472 (= log 2)
    probs = [[0.25, 0.25, 0.25, 0.25], [1.0, 0.0, 0.0, 0.0]]
    assert mean_class_entropy(np.array(probs)) == pytest.approx(math.log(2), abs=1e-6)
    assert mean_class_entropy(torch.tensor(probs)) == pytest.approx(math.log(2), abs=1e-6)
    assert mean_class_entropy(np.zeros((0, 4))) == 0.0
    assert mean_class_entropy(torch.zeros(0, 4)) == 0.0


def test_empty_image_score_rules():
    # "max_c": 1 - the best sub-threshold candidate's c; nothing at all -> 1.0
    assert empty_image_score(0.0, "max_c") == 1.0
    assert empty_image_score(0.45, "max_c") == pytest.approx(0.55)
    assert empty_image_score(0.3, "constant", 0.25) == 0.25
    with pytest.raises(ValueError, match="empty-image rule 'nope'"):
        empty_image_score(0.1, "nope")


def test_scored_image_score_by_hand():
    c = [0.9, 0.8, 0.1]
    b = [0.6, 0.8, 0.9]
    m = [0.3, 0.5, 0.9]
    # threshold 0.5: instances 0 and 1 (S_A and S_B above); eq. 3 over (S_A, S_B):
    # mean 0.5386666, population std (S_B - S_A) / 2 = 0.0690199, S = exp(-0.0690199) * 0.5386666
    expected = math.exp(-(S_B - S_A) / 2) * (S_A + S_B) / 2
    assert scored_image_score(c, b, m, score_threshold=0.5) == pytest.approx(expected, abs=1e-6)
    # threshold 0.85: instance 0 alone -> S = s = S_A
    assert scored_image_score(c, b, m, score_threshold=0.85) == pytest.approx(S_A, abs=1e-6)
    # c exactly at the threshold is scored
    assert scored_image_score(c, b, m, score_threshold=0.9) == pytest.approx(S_A, abs=1e-6)
    # threshold 0.95: nothing scored; best candidate c = 0.9 -> 1 - 0.9
    assert scored_image_score(c, b, m, score_threshold=0.95) == pytest.approx(0.1)
    assert scored_image_score(c, b, m, score_threshold=0.95, empty_rule="constant", empty_constant=0.7) == 0.7
    # no detection at all
    assert scored_image_score([], [], [], score_threshold=0.5) == 1.0
    assert scored_image_score(torch.tensor(c), torch.tensor(b), torch.tensor(m), score_threshold=0.85) == \
        pytest.approx(S_A, abs=1e-6)
