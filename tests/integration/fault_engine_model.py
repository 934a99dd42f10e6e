"""An engine model with a seeded fault, for tests/integration/test_router_faults.py.

The committed engine model (``triton_repo/<engine>/1/model.py``: `t2i_router.triton.backend`
serving the real engine), except that a request whose SEED is the ``fault_seed`` parameter is
answered with an INTERNAL error, the way the backend answers a request the engine failed on.
The other requests of the same execute() go to the engine as usual. Nothing of the router is
changed: this is the Triton side failing one request.
"""

import os
import sys

import triton_python_backend_utils as pb_utils

# As the committed template: the stub ignores PYTHONPATH unless told.
for _entry in reversed(os.environ.get("PYTHONPATH", "").split(os.pathsep)):
    if _entry and _entry not in sys.path:
        sys.path.insert(0, _entry)

from t2i_router.triton.backend import (  # noqa: E402
    execute_engine,
    load_engine_server,
    model_parameters,
)


class TritonPythonModel:
    def initialize(self, args):
        self.server = load_engine_server(args, pb_utils)
        self.fault_seed = int(model_parameters(args)["fault_seed"])

    def execute(self, requests):
        faulty = [
            bool((pb_utils.get_input_tensor_by_name(r, "SEED").as_numpy() == self.fault_seed).any())
            for r in requests
        ]
        healthy = [r for r, bad in zip(requests, faulty) if not bad]
        served = iter(execute_engine(self.server, healthy, pb_utils))
        error = pb_utils.TritonError(
            f"seeded engine fault on SEED {self.fault_seed} ({len(requests)} requests in this "
            "execution)",
            pb_utils.TritonError.INTERNAL,
        )
        return [pb_utils.InferenceResponse(error=error) if bad else next(served) for bad in faulty]
