"""Multi-scale deformable attention: the grid-sample kernel against a naive bilinear loop and gradcheck (2D and
3D), the module's init (uniform weights, query-independent locations, the offset directions), padding, the
backend switch, and half-precision inputs."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from domainmona.adapters.side import msda
from domainmona.adapters.side.msda import MSDeformAttn, ms_deform_attn, resolve_backend
from domainmona.errors import UserError

SHAPES = {2: [(6, 4), (3, 2)], 3: [(3, 4, 2), (2, 2, 1)]}  # (H, W) and (D, H, W) per level
CUDA = torch.cuda.is_available()
MMCV_CUDA = CUDA and msda._mmcv_function()[0] is not None  # short-circuit: no mmcv import on a CPU machine


def levels(shapes, device="cpu"):
    spatial = torch.tensor(shapes, dtype=torch.long, device=device)
    sizes = spatial.prod(1)
    return spatial, torch.cat([sizes.new_zeros(1), sizes.cumsum(0)[:-1]])


def core_inputs(dims, B=2, Q=5, M=2, K=3, Dh=3, dtype=torch.float64, seed=0):
    """Random core inputs; about a quarter of the locations' coordinates lie outside [0, 1]."""
    g = torch.Generator().manual_seed(seed)
    shapes = SHAPES[dims]
    S, L = sum(math.prod(s) for s in shapes), len(shapes)
    value = torch.randn(B, S, M, Dh, generator=g, dtype=dtype)
    locations = torch.rand(B, Q, M, L, K, dims, generator=g, dtype=dtype) * 1.4 - 0.2
    weights = torch.rand(B, Q, M, L, K, generator=g, dtype=dtype)
    return value, *levels(shapes), locations, weights


def naive(value, spatial_shapes, level_start_index, locations, weights):
    """Point by point: (x, y[, z]) in [0, 1] -> pixel coordinates with centres at j + 0.5, the 2^dims
    neighbouring pixels weighted by (1 - distance) per axis, pixels outside the map counting as zero."""
    B, _, M, Dh = value.shape
    _, Q, _, L, K, dims = locations.shape
    out = torch.zeros(B, Q, M, Dh, dtype=torch.float64)
    for b, q, m, level, k in itertools.product(range(B), range(Q), range(M), range(L), range(K)):
        extent = spatial_shapes[level].tolist()[::-1]  # (W, H[, D]), the order of the coordinates
        pos = [locations[b, q, m, level, k, i].item() * extent[i] - 0.5 for i in range(dims)]
        for corner in itertools.product((0, 1), repeat=dims):
            pixel = [math.floor(p) + c for p, c in zip(pos, corner)]
            if not all(0 <= pixel[i] < extent[i] for i in range(dims)):
                continue
            flat = 0
            for i in reversed(range(dims)):  # row-major over (D, H, W): x fastest
                flat = flat * extent[i] + pixel[i]
            bilinear = math.prod(1 - abs(p - j) for p, j in zip(pos, pixel))
            token = level_start_index[level].item() + flat
            out[b, q, m] += weights[b, q, m, level, k].item() * bilinear * value[b, token, m]
    return out.reshape(B, Q, M * Dh)


@pytest.mark.parametrize("dims", [2, 3])
def test_kernel_equals_naive_bilinear_loop(dims):
    inputs = core_inputs(dims)
    assert ((inputs[3] < 0) | (inputs[3] > 1)).any()
    expected = naive(*inputs)
    assert (expected != 0).all()
    assert (ms_deform_attn(*inputs, backend="torch") - expected).abs().max().item() <= 1e-12


@pytest.mark.parametrize("dims", [2, 3])
def test_gradcheck(dims):
    value, spatial, start, locations, weights = core_inputs(dims, B=1, Q=3, K=2, Dh=2, seed=1)
    for t in (value, locations, weights):
        t.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda v, loc, w: ms_deform_attn(v, spatial, start, loc, w, backend="torch"),
                                    (value, locations, weights))


def module_inputs(dims, d_model=16, B=2, Q=7, seed=0, ref_levels=1):
    g = torch.Generator().manual_seed(seed)
    spatial, start = levels(SHAPES[dims])
    S = int(spatial.prod(1).sum())
    return (torch.randn(B, Q, d_model, generator=g), torch.rand(B, Q, ref_levels, dims, generator=g),
            torch.randn(B, S, d_model, generator=g), spatial, start)


@pytest.mark.parametrize("dims,ref_levels", [(2, 1), (2, 2), (3, 1), (3, 2)])
def test_module_at_init_samples_around_the_reference_with_uniform_weights(dims, ref_levels):
    """At init the module is the core called with locations = reference + (direction x step) / (W, H[, D]) and
    weights 1/(L*K): the query changes nothing (not even its gradient) until the offset weights train."""
    M, L, K = 4, 2, 3
    attn = MSDeformAttn(16, n_levels=L, n_heads=M, n_points=K, value_ratio=0.5, spatial_dims=dims)
    query, ref, value_input, spatial, start = module_inputs(dims, ref_levels=ref_levels)
    B, Q = query.shape[:2]
    query.requires_grad_(True)
    out = attn(query, ref, value_input, spatial, start)
    assert out.shape == (B, Q, 16)

    logits = attn.attention_weights(query).view(B, Q, M, L * K)
    assert torch.equal(logits.softmax(-1), torch.full_like(logits, 1 / (L * K)))
    normaliser = {2: torch.tensor([[4.0, 6.0], [2.0, 3.0]]), 3: torch.tensor([[2.0, 4.0, 3.0], [1.0, 2.0, 2.0]])}
    offsets = attn.sampling_offsets.bias.detach().view(M, L, K, dims) / normaliser[dims][None, :, None]
    locations = ref[:, :, None, :, None, :] + offsets
    value = attn.value_proj(value_input).view(B, -1, M, 2)
    expected = attn.output_proj(ms_deform_attn(value, spatial, start, locations.expand(B, Q, M, L, K, dims),
                                               torch.full((B, Q, M, L, K), 1 / (L * K))))
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-6)

    other_query = torch.randn_like(query) * 10
    assert torch.equal(attn(other_query, ref, value_input, spatial, start), out)
    out.square().sum().backward()
    assert torch.equal(query.grad, torch.zeros_like(query))
    with torch.no_grad():  # a trained offset weight makes the locations follow the query
        attn.sampling_offsets.weight.normal_(std=0.1)
    assert not torch.allclose(attn(other_query, ref, value_input, spatial, start),
                              attn(query, ref, value_input, spatial, start))


def test_offset_directions_2d():
    """Head m points at angle 2πm/8, scaled so the larger component is ±1, at steps 1..K on every level."""
    attn = MSDeformAttn(16, n_levels=3, n_heads=8, n_points=4)
    bias = attn.sampling_offsets.bias.detach().view(8, 3, 4, 2)
    heads = torch.tensor([(1, 0), (1, 1), (0, 1), (-1, 1), (-1, 0), (-1, -1), (0, -1), (1, -1)], dtype=torch.float32)
    expected = heads[:, None, None, :] * torch.arange(1, 5.0)[None, None, :, None]
    torch.testing.assert_close(bias, expected.expand(8, 3, 4, 2), rtol=0, atol=1e-6)


def test_offset_directions_3d():
    """Project's choice: ±axes, then ±cube diagonals, then ±face diagonals; largest component 1; 26 heads use
    every neighbour of a voxel once."""
    attn = MSDeformAttn(24, n_levels=2, n_heads=12, n_points=2, spatial_dims=3)
    bias = attn.sampling_offsets.bias.detach().view(12, 2, 2, 3)
    heads = torch.tensor([(1, 0, 0), (-1, 0, 0), (0, 1, 0), (0, -1, 0), (0, 0, 1), (0, 0, -1),
                          (1, 1, 1), (-1, -1, -1), (1, 1, -1), (-1, -1, 1), (1, -1, 1), (-1, 1, -1)],
                         dtype=torch.float32)
    assert torch.equal(bias[:, :, 0], heads[:, None].expand(12, 2, 3))
    assert torch.equal(bias[:, :, 1], 2 * heads[:, None].expand(12, 2, 3))
    every = MSDeformAttn(26, n_levels=1, n_heads=26, n_points=1, spatial_dims=3).sampling_offsets.bias.view(26, 3)
    neighbours = {v for v in itertools.product((-1, 0, 1), repeat=3) if any(v)}
    assert {tuple(int(c) for c in row) for row in every} == neighbours


@pytest.mark.parametrize("dims", [2, 3])
def test_padding_mask_removes_the_padded_values(dims):
    attn = MSDeformAttn(16, n_levels=2, n_heads=4, n_points=3, spatial_dims=dims)
    with torch.no_grad():
        attn.sampling_offsets.weight.normal_(std=0.1)
        attn.attention_weights.weight.normal_(std=0.1)
    query, ref, value_input, spatial, start = module_inputs(dims)
    mask = torch.rand(value_input.shape[:2], generator=torch.Generator().manual_seed(3)) < 0.4
    masked = attn(query, ref, value_input, spatial, start, padding_mask=mask)
    changed = torch.where(mask[..., None], torch.randn_like(value_input) * 100, value_input)
    assert torch.equal(attn(query, ref, changed, spatial, start, padding_mask=mask), masked)
    assert not torch.allclose(attn(query, ref, value_input, spatial, start), masked)


def test_backend_switch_on_cpu(monkeypatch):
    inputs = core_inputs(2, dtype=torch.float32)
    with pytest.raises(UserError) as refused:
        ms_deform_attn(*inputs, backend="mmcv")
    assert "\n" not in str(refused.value) and "mmcv" in str(refused.value)
    for bad in (lambda: ms_deform_attn(*inputs, backend="cuda"), lambda: MSDeformAttn(16, backend="cuda"),
                lambda: MSDeformAttn(24, spatial_dims=3, backend="mmcv")):
        with pytest.raises(UserError):
            bad()

    def no_mmcv():
        raise AssertionError("'auto' on the CPU must not import mmcv")

    monkeypatch.setattr(msda, "_mmcv_function", no_mmcv)
    assert resolve_backend("auto", torch.device("cpu"), 2) == "torch"
    assert torch.equal(ms_deform_attn(*inputs), ms_deform_attn(*inputs, backend="torch"))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_inputs_sample_in_fp32(dtype):
    value, spatial, start, locations, weights = (t.to(dtype) if t.is_floating_point() else t
                                                 for t in core_inputs(2, dtype=torch.float32))
    out = ms_deform_attn(value, spatial, start, locations, weights)
    assert out.dtype == dtype
    fp32 = ms_deform_attn(value.float(), spatial, start, locations.float(), weights.float())
    assert torch.equal(out, fp32.to(dtype))  # cast up, sample, cast back: nothing else rounds


def test_module_under_bf16_autocast():
    """The projections run in bf16, sampling in fp32: within 3% of the fp32 module's largest output (1.6% at
    most over 200 seeds)."""
    torch.manual_seed(0)
    attn = MSDeformAttn(32, n_levels=2, n_heads=4, n_points=3)
    with torch.no_grad():
        attn.sampling_offsets.weight.normal_(std=0.1)
        attn.attention_weights.weight.normal_(std=0.1)
    query, ref, value_input, spatial, start = module_inputs(2, d_model=32)
    fp32 = attn(query, ref, value_input, spatial, start)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        half = attn(query, ref, value_input, spatial, start)
    assert half.dtype == torch.bfloat16
    assert (half.float() - fp32).abs().max() <= 0.03 * fp32.abs().max()


@pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
def test_torch_kernel_on_cuda_equals_cpu():
    inputs = core_inputs(3, dtype=torch.float32)
    cuda = ms_deform_attn(*(t.cuda() for t in inputs), backend="torch")
    torch.testing.assert_close(cuda.cpu(), ms_deform_attn(*inputs, backend="torch"), rtol=0, atol=1e-5)


@pytest.mark.skipif(not MMCV_CUDA, reason="needs CUDA and mmcv's compiled CUDA ops")
def test_mmcv_kernel_equals_torch():
    g = torch.Generator().manual_seed(4)
    spatial, start = levels([(16, 12), (8, 6), (4, 3)], "cuda")
    S = int(spatial.prod(1).sum())
    value = torch.randn(3, S, 4, 8, generator=g).cuda()
    locations = (torch.rand(3, 50, 4, 3, 4, 2, generator=g) * 1.2 - 0.1).cuda()
    weights = torch.rand(3, 50, 4, 3, 4, generator=g).softmax(-1).cuda()
    assert resolve_backend("auto", value.device, 2) == "mmcv"
    results = {}
    for backend in ("mmcv", "torch"):
        leaves = [t.clone().requires_grad_(True) for t in (value, locations, weights)]
        out = ms_deform_attn(leaves[0], spatial, start, leaves[1], leaves[2], backend=backend)
        out.backward(torch.ones_like(out))
        results[backend] = [out] + [t.grad for t in leaves]
    for mine, theirs in zip(results["torch"], results["mmcv"]):
        torch.testing.assert_close(mine, theirs, rtol=1e-5, atol=1e-5)
