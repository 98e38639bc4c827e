"""CPU torch tensors go in without a copy; GPU/meta tensors are refused.
Skipped when torch is not installed (it is optional)."""
import numpy as np
import pytest

import cattn
from cattn import reference as ref

torch = pytest.importorskip("torch")


def test_cpu_tensors_accepted_and_match_sdpa():
    g = torch.Generator().manual_seed(0)
    q = torch.randn(2, 4, 33, 16, generator=g)
    k = torch.randn(2, 4, 40, 16, generator=g, requires_grad=True)
    v = torch.randn(2, 4, 40, 8, generator=g)
    out = cattn.attention(q, k, v, causal=True)
    assert isinstance(out, np.ndarray) and out.dtype == np.float32
    e = ref.attention(q.numpy(), k.detach().numpy(), v.numpy(), causal=True)
    np.testing.assert_allclose(out, e, atol=2e-6, rtol=1e-5)
    # PyTorch's own kernel agrees (its causal mask is top-left aligned: Lq < Lk
    # here, so compare the bottom-right convention through an explicit mask)
    mask = torch.from_numpy(np.tril(np.ones((33, 40), bool), k=40 - 33))
    sdpa = torch.nn.functional.scaled_dot_product_attention(q, k.detach(), v, attn_mask=mask)
    np.testing.assert_allclose(out, sdpa.numpy(), atol=2e-6, rtol=1e-5)


def test_tensor_is_not_copied():
    t = torch.arange(12, dtype=torch.float32).reshape(3, 4)
    from cattn._operands import as_real_array
    arr = as_real_array(t, "query")
    assert np.shares_memory(arr, t.numpy())


def test_bfloat16_tensor_is_computed_as_bfloat16():
    """A bf16 tensor is read as bf16 (no float32 copy) and the result is
    bf16, as for ml_dtypes.bfloat16 arrays; its values are within the
    documented bf16 bound of the float64 reference on the same inputs."""
    ml_dtypes = pytest.importorskip("ml_dtypes")
    q = torch.randn(5, 8).to(torch.bfloat16)
    out = cattn.attention(q, q, q)
    assert out.dtype == ml_dtypes.bfloat16
    x = q.float().numpy().astype(np.float64)
    e = ref.attention(x, x, x)
    got = out.astype(np.float64)
    assert np.linalg.norm(got - e) <= 4e-3 * np.linalg.norm(e)


def test_non_cpu_tensor_is_a_type_error():
    q = torch.empty(4, 8, device="meta")
    with pytest.raises(TypeError, match="query.*cpu"):
        cattn.attention(q, np.ones((4, 8)), np.ones((4, 8)))


def test_tensors_numpy_cannot_view_are_typeerrors():
    """A complex tensor with the conjugate bit and a nested tensor made
    torch raise RuntimeError from inside cattn; both are TypeErrors naming
    the argument."""
    x = torch.ones(2, 3)
    conj = torch.complex(torch.ones(2, 3), torch.ones(2, 3)).conj()
    assert conj.is_conj()
    with pytest.raises(TypeError, match="key"):
        cattn.attention(x, conj, x)
    nested = torch.nested.nested_tensor([torch.ones(2, 3), torch.ones(4, 3)])
    with pytest.raises(TypeError, match="query"):
        cattn.attention(nested, x, x)
    with pytest.raises(TypeError, match="value"):
        cattn.attention(x, x, torch.ones(2, 3).to_sparse())
