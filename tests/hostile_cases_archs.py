"""Hostile checkpoints, round 2 (issue 19): tensors that ``load_state_dict`` would take or cast
without a word, or that fail deep inside PyTorch with a traceback.

Each case replaces ``classifier.weight`` of the workspace's good toy-cnn checkpoint and feeds the
file to ``run --checkpoint``; the common contract of tests/test_hostile_inputs.py applies (exit
!= 0, one stderr line naming the file, the tensor and the problem, nothing changed on disk).
A float64 tensor is not here: it is cast to float32 with a warning and the run goes on
(tests/test_checkpoint_tensors.py checks that, and ``ACCEPTED_ROWS`` below describes it).

Import ``hostile_cases`` (which appends these cases to its table at its end), not this module first.
"""

from __future__ import annotations

import warnings
from typing import List

from hostile_cases import Case, Invocation, Workspace, run_args

KEY = "classifier.weight"  # (527, 64) float32 in toy-cnn


def _tensor_case(kind: str):
    def build(ws: Workspace) -> Invocation:
        import torch

        sd = dict(ws.state_dict())
        w = sd[KEY]
        if kind == "sparse":
            sd[KEY], expect = w.to_sparse(), [f"'{KEY}' is a sparse_coo tensor", "only dense tensors"]
        elif kind == "sparse-csr":
            with warnings.catch_warnings():  # PyTorch's "CSR support is in beta" notice
                warnings.simplefilter("ignore")
                sd[KEY] = w.to_sparse_csr()
            expect = [f"'{KEY}' is a sparse_csr tensor", "only dense tensors"]
        elif kind == "sparse-malformed":
            # an index far outside the declared size: unchecked, using it reads out of bounds
            idx = torch.tensor([[0, 99_999_999], [0, 5]])
            sd[KEY] = torch.sparse_coo_tensor(idx, torch.ones(2), tuple(w.shape), check_invariants=False)
            expect = ["malformed sparse tensor", "only dense tensors"]
        elif kind == "meta":
            sd[KEY], expect = torch.empty(w.shape, device="meta"), [f"'{KEY}' is a meta tensor", "without data"]
        elif kind == "complex":
            sd[KEY] = w.to(torch.complex64) + 1j
            expect = [f"'{KEY}' has dtype complex64, model expects float32", "imaginary part"]
        elif kind == "int":
            sd[KEY], expect = (w * 1000).to(torch.int64), [f"'{KEY}' has dtype int64, model expects float32"]
        elif kind == "bool":
            sd[KEY], expect = w > 0, [f"'{KEY}' has dtype bool, model expects float32"]
        else:
            raise ValueError(kind)
        name = f"ckpt_{kind.replace('-', '_')}.pt"
        ws.save_ckpt(name, sd)
        return Invocation(run_args(ckpt=name), [name, *expect])

    return build


CASES: List[Case] = [
    Case("ckpt-sparse-tensor", "weights", "checkpoint holding a sparse (COO) tensor",
         "refused, the tensor and its layout named", _tensor_case("sparse")),
    Case("ckpt-sparse-csr-tensor", "weights", "checkpoint holding a sparse CSR tensor",
         "refused, the tensor named (PyTorch's beta notice suppressed)", _tensor_case("sparse-csr"), subprocess=True),
    Case("ckpt-sparse-malformed", "weights", "checkpoint holding a sparse tensor whose indices exceed its size",
         "refused while loading (invariants checked), nothing read out of bounds", _tensor_case("sparse-malformed")),
    Case("ckpt-meta-tensor", "weights", "checkpoint holding a meta tensor (shape, no data)",
         "refused, the tensor named", _tensor_case("meta")),
    Case("ckpt-complex-tensor", "weights", "complex tensor for a float parameter",
         "refused (a cast would drop the imaginary part)", _tensor_case("complex")),
    Case("ckpt-int-tensor", "weights", "integer tensor for a float parameter",
         "refused, both dtypes named", _tensor_case("int")),
    Case("ckpt-bool-tensor", "weights", "boolean tensor for a float parameter",
         "refused, both dtypes named", _tensor_case("bool")),
]

# A behaviour on such input that ends in a successful run (same shape as hostile_cases.ACCEPTED)
ACCEPTED_ROWS: List[tuple] = [
    ("float64 tensors in a checkpoint for float32 parameters", "cast to float32 with one warning naming the file, "
     "the number of tensors and the first; float16/bfloat16 are cast up silently (exact)"),
]
