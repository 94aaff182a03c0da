"""The AIMO 3 gateway (stand-in): answers 0..99999."""

import kaggle_evaluation.core as core


class AIMO3Gateway(core.Gateway):
    answer_range = (0, 99999)
    competition_dir = "ai-mathematical-olympiad-progress-prize-3"
    response_timeout_s = 9 * 3600.0  # effectively none


if __name__ == "__main__":
    core.main(AIMO3Gateway)
