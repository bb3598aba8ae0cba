import torch

from crystalforge.core.segment import segment_count, segment_max, segment_mean, segment_softmax, segment_sum


def test_segment_ops_against_loops():
    src = torch.randn(10, 3, dtype=torch.float64)
    index = torch.tensor([0, 0, 2, 2, 2, 3, 3, 3, 3, 0])
    s = segment_sum(src, index, 5)
    m = segment_mean(src, index, 5)
    mx = segment_max(src, index, 5)
    for seg in range(5):
        rows = src[index == seg]
        if len(rows):
            torch.testing.assert_close(s[seg], rows.sum(0))
            torch.testing.assert_close(m[seg], rows.mean(0))
            torch.testing.assert_close(mx[seg], rows.max(0).values)
        else:
            assert torch.all(s[seg] == 0) and torch.all(m[seg] == 0) and torch.all(torch.isinf(mx[seg]))
    assert segment_count(index, 5).tolist() == [3, 0, 3, 4, 0]


def test_segment_softmax_sums_to_one_and_is_stable():
    src = torch.tensor([1000.0, 1001.0, -5.0, 3.0, 3.0], dtype=torch.float64)
    index = torch.tensor([0, 0, 1, 2, 2])
    p = segment_softmax(src, index, 3)
    assert torch.isfinite(p).all()
    torch.testing.assert_close(segment_sum(p, index, 3), torch.ones(3, dtype=torch.float64))
    torch.testing.assert_close(p[3], torch.tensor(0.5, dtype=torch.float64))


def test_segment_sum_gradient_flows():
    src = torch.randn(4, requires_grad=True)
    segment_sum(src, torch.tensor([0, 1, 1, 0]), 2).sum().backward()
    assert torch.equal(src.grad, torch.ones(4))
