"""torch tensors through the backend on a real vineyardd: zero-copy, exact dtype and shape.

torch is an optional extra with multi-GB wheels; ``make test`` runs this module in
``.venv-pandas3``, which has it (see the Makefile).
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections import namedtuple

import pytest
import torch

from fluid_airflow.exceptions import UnsupportedXComValueError
from fluid_airflow.vineyard.xcom import VineyardXComBackend as Backend

Result = namedtuple("Result", ["value"])
SCOPE = {"dag_id": "torch", "run_id": "manual__2026-12-04T00:00:00+00:00", "task_id": "t", "map_index": -1}
DTYPES = [
    torch.float32,
    torch.float64,
    torch.float16,
    torch.bfloat16,
    torch.int8,
    torch.int16,
    torch.int32,
    torch.int64,
    torch.uint8,
    torch.uint16,
    torch.bool,
    torch.complex64,
    torch.complex128,
    torch.float8_e4m3fn,
]


def push(value, key):
    return json.loads(json.dumps(Backend.serialize_value(value, key=key, **SCOPE)))


def pull(db_value):
    return Backend.deserialize_value(Result(db_value))


def sample(dtype: torch.dtype) -> torch.Tensor:
    values = torch.arange(24, dtype=torch.float64).reshape(2, 3, 4) - 5
    if dtype.is_complex:
        return torch.complex(values, -values).to(dtype)
    if dtype in (torch.uint8, torch.uint16):
        values = values.abs()
    return values.to(dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=[str(d).removeprefix("torch.") for d in DTYPES])
def test_tensor_round_trips_zero_copy_with_dtype_and_shape(vineyard_client, dtype):
    tensor = sample(dtype)
    db_value = push(tensor, f"t_{dtype}")
    assert db_value["type"] == "torch.Tensor" and db_value["shape"] == [2, 3, 4]
    got = pull(db_value)
    assert type(got) is torch.Tensor and got.dtype == dtype and got.shape == tensor.shape
    assert torch.equal(got.view(torch.uint8), tensor.view(torch.uint8))  # bit for bit
    assert vineyard_client.is_shared_memory(got.data_ptr())


def test_strided_scalar_empty_and_grad_tensors(vineyardd):
    base = torch.arange(12.0).reshape(3, 4)
    assert torch.equal(pull(push(base.t(), "transposed")), base.t())
    assert torch.equal(pull(push(base[:, ::2], "strided")), base[:, ::2])
    scalar = pull(push(torch.tensor(2.5), "scalar"))
    assert scalar.shape == () and scalar.item() == 2.5
    assert pull(push(torch.zeros(0, 3), "empty")).shape == (0, 3)
    weights = torch.ones(3, requires_grad=True)
    got = pull(push(weights, "grad"))
    assert torch.equal(got, weights.detach()) and not got.requires_grad


def test_tensors_that_cannot_be_stored_are_refused(vineyard_client):
    before = int(vineyard_client.status.memory_usage)
    with pytest.raises(UnsupportedXComValueError, match=r"tensor\.cpu\(\)"):
        push(torch.empty(3, device="meta"), "meta")
    with pytest.raises(UnsupportedXComValueError, match=r"to_dense\(\)"):
        push(torch.eye(3).to_sparse(), "sparse")
    assert int(vineyard_client.status.memory_usage) == before


def test_in_place_write_into_a_tensor_read_back_kills_the_process(vineyardd):
    # The documented rule: read-only like every value read from Vineyard; torch cannot mark a
    # tensor read-only, and the mapping is PROT_READ, so a write is a segmentation fault.
    db_value = push(torch.zeros(1000), "write_me")
    code = (
        "import json, sys, collections, torch\n"
        "from fluid_airflow.vineyard.xcom import VineyardXComBackend as B\n"
        "t = B.deserialize_value(collections.namedtuple('R', ['value'])(json.loads(sys.argv[1])))\n"
        "c = t.clone(); c.add_(1); assert c.sum().item() == 1000\n"
        "print('clone ok', flush=True)\n"
        "t.add_(1)\n"
        "print('wrote', flush=True)\n"
    )
    out = subprocess.run([sys.executable, "-c", code, json.dumps(db_value)], capture_output=True, text=True)
    assert "clone ok" in out.stdout and "wrote" not in out.stdout, out.stdout + out.stderr
    assert out.returncode == -11, (out.returncode, out.stderr[-500:])
