"""The AIMO 2 inference server (stand-in)."""

import kaggle_evaluation.core as core
from kaggle_evaluation.aimo_2_gateway import AIMO2Gateway


class AIMO2InferenceServer(core.InferenceServer):
    def _get_gateway_for_test(self, data_paths=None):
        return AIMO2Gateway(data_paths)
