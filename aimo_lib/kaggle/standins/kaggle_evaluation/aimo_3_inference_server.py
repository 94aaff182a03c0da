"""The AIMO 3 inference server (stand-in)."""

import kaggle_evaluation.core as core
from kaggle_evaluation.aimo_3_gateway import AIMO3Gateway


class AIMO3InferenceServer(core.InferenceServer):
    def _get_gateway_for_test(self, data_paths=None):
        return AIMO3Gateway(data_paths)
